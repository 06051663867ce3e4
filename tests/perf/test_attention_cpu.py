"""Attention backends on the CPU: forward + backward at the tiny model's spatial-attention shape and at
one paper-like shape, each checked against an explicit float64 softmax written here (not the model's)."""

from __future__ import annotations

import pytest
import torch

from models import SIZES, Variant
from models.attention_backends import ATTENTION
from tests.perf.helpers import CPU_ROUNDS, CPU_WARMUP_ROUNDS, clear_grads

CPU = torch.device("cpu")
SCALE = 8.0  # CT-CLIP's fixed logit scale
TINY = SIZES["tiny"]
# The spatial transformer attends within one frame: (batch x frames) sequences of h*w tokens.
TINY_SHAPE = (2 * TINY.grid[0], TINY.heads, TINY.grid[1] * TINY.grid[2], TINY.dim_head)
PAPER_LIKE_SHAPE = (2, 8, 576, 32)  # a 24 x 24 frame, 8 heads of 32: the paper size's spatial attention


def _cpu_backends() -> list[tuple[str, bool]]:
    """(backend, takes_bias) for every backend that can run on this CPU, with a bias where it may."""
    out = []
    for name in ATTENTION.names():
        if ATTENTION.supports(name, Variant(attention=name, position="cpb"), CPU) is None:
            out.append((name, True))
        elif ATTENTION.supports(name, Variant(attention=name, position="none"), CPU) is None:
            out.append((name, False))
    return out


BACKENDS = _cpu_backends()


def _inputs(shape: tuple[int, int, int, int], with_bias: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    b, h, n, d = shape
    # q and k L2-normalised as the model feeds them, so logits stay within +-8 as in CT-CLIP.
    q = torch.nn.functional.normalize(torch.randn(shape, generator=gen), dim=-1).requires_grad_(True)
    k = torch.nn.functional.normalize(torch.randn(shape, generator=gen), dim=-1).requires_grad_(True)
    v = torch.randn(shape, generator=gen).requires_grad_(True)
    bias = (torch.randn(h, n, n, generator=gen) * 0.5).requires_grad_(True) if with_bias else None
    dout = torch.randn(shape, generator=gen)
    return q, k, v, bias, dout


def _reference(q, k, v, bias, dout):
    """float64 softmax(scale * q k^T + bias) v and its gradients, by hand."""
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v) + ((bias,) if bias is not None else ())]
    logits = SCALE * leaves[0] @ leaves[1].transpose(-1, -2)
    if bias is not None:
        logits = logits + leaves[3]
    out = logits.softmax(-1) @ leaves[2]
    out.backward(dout.double())
    return out.detach(), [t.grad for t in leaves]


def _check_against_reference(fn, q, k, v, bias, dout) -> None:
    leaves = [t for t in (q, k, v, bias) if t is not None]
    clear_grads(*leaves)
    out = fn(q, k, v, bias, SCALE)
    out.backward(dout)
    ref_out, ref_grads = _reference(q, k, v, bias, dout)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-4, atol=1e-4)
    for name, t, ref in zip("qkvb", leaves, ref_grads):
        torch.testing.assert_close(t.grad.double(), ref, rtol=1e-3, atol=1e-4, msg=f"d{name} differs")


def test_some_cpu_backends_exist():
    names = [name for name, _ in BACKENDS]
    assert "math" in names and "sdpa" in names, names


@pytest.mark.parametrize("name,with_bias", BACKENDS, ids=[n for n, _ in BACKENDS])
def test_attention_fwd_bwd_tiny(benchmark, name, with_bias):
    fn = ATTENTION.get(name).impl
    q, k, v, bias, dout = _inputs(TINY_SHAPE, with_bias)
    _check_against_reference(fn, q, k, v, bias, dout)
    leaves = [t for t in (q, k, v, bias) if t is not None]
    benchmark.extra_info.update(shape=list(TINY_SHAPE), bias=with_bias)
    benchmark.pedantic(lambda: fn(q, k, v, bias, SCALE).backward(dout), setup=lambda: clear_grads(*leaves),
                       rounds=CPU_ROUNDS * 10, warmup_rounds=CPU_WARMUP_ROUNDS)


@pytest.mark.parametrize("name", ["math", "sdpa"])
def test_attention_fwd_bwd_paper_like_shape(benchmark, name):
    fn = ATTENTION.get(name).impl
    q, k, v, bias, dout = _inputs(PAPER_LIKE_SHAPE, with_bias=True, seed=1)
    _check_against_reference(fn, q, k, v, bias, dout)
    benchmark.extra_info.update(shape=list(PAPER_LIKE_SHAPE), bias=True)
    benchmark.pedantic(lambda: fn(q, k, v, bias, SCALE).backward(dout),
                       setup=lambda: clear_grads(q, k, v, bias), rounds=CPU_ROUNDS,
                       warmup_rounds=CPU_WARMUP_ROUNDS)
