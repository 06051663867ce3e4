"""kernels.supports() and the lazy package: each runs in a fresh interpreter, because whether Triton is
importable and whether TRITON_INTERPRET was set are decided once per process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

import kernels
from tests.child_env import child_env

ROOT = Path(__file__).resolve().parents[2]


def python(code: str, interpret: "str | None") -> str:
    env = child_env(without=("TRITON_INTERPRET",), CUDA_VISIBLE_DEVICES="")  # the same answers on a GPU machine
    if interpret is not None:
        env["TRITON_INTERPRET"] = interpret
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_reasons_for_devices_that_cannot_run():
    assert "not on meta" in kernels.supports("meta")
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in kernels.supports("cuda")


def test_cpu_needs_the_interpreter_before_the_kernels_are_defined():
    reason = python("import kernels; print(kernels.supports('cpu'))", interpret=None)
    assert "TRITON_INTERPRET=1" in reason and "CUDA GPU" in reason
    assert python("import kernels; print(kernels.supports('cpu'))", interpret="1") == "None"
    # Kernels defined without the interpreter stay compiled-only, even if the variable is set later.
    late = python("import os, kernels; kernels.TritonRMSNorm; os.environ['TRITON_INTERPRET'] = '1'; "
                  "print(kernels.supports('cpu'))", interpret=None)
    assert "defined without TRITON_INTERPRET=1" in late


def test_interpreted_kernels_run_on_cpu_in_a_fresh_process():
    out = python("import torch, kernels; x = torch.randn(3, 8, requires_grad=True); "
                 "y = kernels.TritonRMSNorm(8)(x); y.sum().backward(); "
                 "print(kernels.supports('cpu'), tuple(x.grad.shape))", interpret="1")
    assert out == "None (3, 8)"


def test_every_kernel_module_is_lazy_and_says_how_it_was_defined():
    # supports('cpu') reads INTERPRETED from each loaded kernel module: every module the models use must
    # be listed, and every public name must load.
    out = python("import kernels, sys; names = [getattr(kernels, n) for n in kernels.__all__]; "
                 "print(sorted(m for m in sys.modules if m.startswith('kernels.') and m != 'kernels._launch' "
                 "and m not in kernels.KERNEL_MODULES))", interpret="1")
    assert out == "[]"


def test_importing_kernels_without_triton_gives_a_reason_not_an_error():
    # sys.modules[name] = None makes `import name` fail as if the package were not installed.
    code = ("import sys; sys.modules['triton'] = None; import kernels; print(kernels.supports('cpu')); "
            "print('triton' in sys.modules and sys.modules['triton'] is not None)")
    reason, triton_loaded = python(code, interpret="1").splitlines()
    assert "Triton is not installed" in reason and triton_loaded == "False"


def test_importing_kernels_does_not_import_triton_or_other_packages():
    code = "import sys, kernels; print(sorted(m for m in ('triton', 'models', 'bench') if m in sys.modules))"
    loaded = python(code, interpret="1")
    assert loaded == "[]"
