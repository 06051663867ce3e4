"""bench.profile: the costliest operators of one step, ranked by self time, shares of the step's total."""

from __future__ import annotations

import pytest
import torch

from bench.profile import profile_step


class MatmulStep:
    """A 'step' whose cost is one large matmul and a few tiny elementwise ops."""

    def __init__(self, device: str, n: int) -> None:
        self.a = torch.randn(n, n, device=device)
        self.b = torch.randn(n, n, device=device)
        self.small = torch.randn(8, device=device)
        self.zeroed = 0

    def __call__(self) -> torch.Tensor:
        for _ in range(3):
            self.small = self.small * 1.5 + 1.0
        return self.a @ self.b

    def zero_grad(self) -> None:
        self.zeroed += 1


def _check(profiled: tuple[list[dict], dict], top: int) -> list[dict]:
    rows, totals = profiled
    assert 0 < len(rows) <= top
    shares = [r["share"] for r in rows]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    assert all(r["self_s"] > 0 and r["calls"] >= 1 for r in rows)
    # The totals cover every operator, the ranked ones included: shares are of the total.
    assert totals["self_s"] == pytest.approx(rows[0]["self_s"] / rows[0]["share"])
    assert totals["calls"] >= sum(r["calls"] for r in rows)
    return rows


def test_cpu_step_is_ranked_by_host_self_time():
    step = MatmulStep("cpu", 384)
    rows = _check(profile_step(step, torch.device("cpu"), top=5), 5)
    assert rows[0]["name"] == "aten::mm" and rows[0]["share"] > 0.5
    assert step.zeroed == 1  # the profiled step ends like a training step: gradients cleared


@pytest.mark.gpu
def test_gpu_step_is_ranked_by_kernel_time():
    step = MatmulStep("cuda", 4096)
    step()  # cuBLAS handle and kernel selection outside the profiled step
    torch.cuda.synchronize()
    rows = _check(profile_step(step, torch.device("cuda"), top=5), 5)
    # Kernels, not the aten operators that launched them (those would double-count the time).
    assert not any(r["name"].startswith("aten::") for r in rows)
    assert rows[0]["share"] > 0.8
