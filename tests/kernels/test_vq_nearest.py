"""kernels/vq_nearest.py: the fused nearest-code search against an fp64 argmax.

An argmax cannot be compared with a tolerance, so each check has two parts: every picked code scores
within `tol` of the best one in fp64 (what rounding can change), and wherever the best code leads the
runner-up by more than tol the pick is exactly the fp64 argmax (what rounding cannot change). In the
interpreter tl.dot multiplies in fp32 whatever input_precision says, so tol is fp32's there; on a GPU
the tf32 bound of the module docstring applies.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from kernels import supports
from kernels.vq_nearest import nearest_code

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernels = pytest.mark.skipif(supports(DEVICE) is not None, reason=str(supports(DEVICE)))
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="tf32 tensor cores need a CUDA GPU")
# How far below the best code's score a picked code may be, for unit vectors: twice the score error of
# fp32 accumulation over <= 512 terms, and of tf32 (2 * 2^-10 per score, inputs truncated at worst).
FP32_TOL = 1e-5
TF32_TOL = 4e-3


def _unit(*shape: int, dtype=torch.float32) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, device=DEVICE), dim=-1).to(dtype)


def assert_argmax(index: torch.Tensor, x: torch.Tensor, codes: torch.Tensor, tol: float) -> None:
    scores = x.reshape(-1, x.shape[-1]).double() @ codes.double().t()
    index = index.reshape(-1)
    assert index.dtype == torch.int64 and len(index) == len(scores)
    top2 = scores.topk(min(2, scores.shape[1]), dim=1).values
    picked = scores.gather(1, index[:, None]).squeeze(1)
    assert (picked >= top2[:, 0] - tol).all(), (top2[:, 0] - picked).max()
    if scores.shape[1] > 1:
        clear = top2[:, 0] - top2[:, -1] > tol
    else:
        clear = torch.ones_like(picked, dtype=torch.bool)
    assert clear.float().mean() > 0.25  # the exact comparison below covers a good share of the rows
    assert torch.equal(index[clear], scores.argmax(dim=1)[clear])


@needs_kernels
@pytest.mark.parametrize("rows, codes, dim", [(1, 1, 1), (37, 17, 3), (130, 129, 40), (64, 200, 70)])
def test_matches_fp64_argmax_on_odd_shapes(rows, codes, dim):
    # Shapes that leave partial row, code and feature tiles (the interpreter's blocks are 64 wide).
    torch.manual_seed(rows + codes + dim)
    x, book = _unit(rows, dim), _unit(codes, dim)
    assert_argmax(nearest_code(x, book, "ieee"), x, book, FP32_TOL)


@needs_kernels
def test_strided_input_leading_dims_and_unnormalised_rows():
    # A (B, N, D) view whose rows are 96 apart (every other row of a 48-wide tensor, first half): the
    # kernel reads it in place through its row stride. x need not be unit-norm for the argmax.
    torch.manual_seed(1)
    x = (torch.randn(3, 50, 2 * 24, device=DEVICE) * 5.0)[:, ::2, :24]
    assert not x.is_contiguous() and x.reshape(-1, 24).stride() == (96, 1)
    book = _unit(90, 24)
    index = nearest_code(x, book, "ieee")
    assert index.shape == (3, 25)
    assert_argmax(index, F.normalize(x, dim=-1), book, FP32_TOL)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    torch.manual_seed(2)
    x, book = _unit(70, 32, dtype=dtype), _unit(100, 32, dtype=dtype)
    # The kernel upcasts on load, so the reference is the fp64 argmax of the same rounded values.
    assert_argmax(nearest_code(x, book, "ieee"), x, book, FP32_TOL)


@needs_kernels
def test_ties_go_to_the_lowest_index_within_and_across_code_tiles():
    torch.manual_seed(3)
    book = _unit(150, 16)
    book[9] = book[5]      # same tile as 5
    book[140] = book[5]    # a later tile (blocks of 64 in the interpreter, 128 on a GPU)
    x = torch.stack([book[5], torch.zeros_like(book[5])])
    index = nearest_code(x, book, "ieee")
    # Row 0 ties at 5, 9 and 140; the all-zero row ties everywhere, and torch.argmax picks 0 as well.
    assert index.tolist() == [5, 0]
    assert index.tolist() == (x @ book.t()).argmax(dim=1).tolist()


@needs_kernels
def test_all_negative_scores_never_pick_a_padding_code():
    # 3 codes in a 16-wide tile: padded lanes load zeros and would score 0, above every real code here.
    book = F.normalize(torch.rand(3, 5, device=DEVICE) + 0.1, dim=-1)
    x = -book.mean(0, keepdim=True)
    index = nearest_code(x, book, "ieee")
    assert index.item() == (x @ book.t()).argmax().item() < 3


@needs_kernels
def test_empty_inputs():
    assert nearest_code(torch.zeros(0, 8, device=DEVICE), _unit(5, 8)).shape == (0,)


@needs_kernels
def test_opcheck():
    x, book = _unit(2, 21, 12)[:, ::2], _unit(33, 12)
    torch.library.opcheck(torch.ops.ctclip_kernels.nearest_code.default, (x, book, "ieee"),
                          test_utils=("test_schema", "test_faketensor"))


def test_fake_mode_shape_and_flop_count():
    # Runs everywhere: fake tensors never launch the kernel.
    with FakeTensorMode():
        x, book = torch.randn(4, 13824, 512), torch.randn(8192, 512)
        with FlopCounterMode(display=False) as flops:
            index = nearest_code(x, book)
    assert index.shape == (4, 13824) and index.dtype == torch.int64
    assert flops.get_total_flops() == 2 * 4 * 13824 * 8192 * 512  # the FLOPs of x @ book.t()


def test_rejects_bad_arguments():
    with FakeTensorMode():
        with pytest.raises(ValueError, match="input_precision"):
            nearest_code(torch.randn(3, 8), torch.randn(4, 8), "tf32x3")
        with pytest.raises(ValueError, match="codes"):
            nearest_code(torch.randn(3, 8), torch.randn(4, 9))
        with pytest.raises(TypeError):
            nearest_code(torch.ones(3, 8, dtype=torch.int32), torch.randn(4, 8))


@pytest.mark.gpu  # selected by the GPU runs (-m gpu), as every CUDA-only test is
@needs_gpu
@pytest.mark.parametrize("precision, tol", [("tf32", TF32_TOL), ("ieee", FP32_TOL)])
def test_gpu_paper_shapes(precision, tol):
    # The paper's codebook (8,192 x 512) against two volumes' worth of tokens.
    torch.manual_seed(4)
    x, book = _unit(2 * 13824, 512), _unit(8192, 512)
    assert_argmax(nearest_code(x, book, precision), x, book, tol)


@needs_kernels
def test_compiled_vq_keeps_the_search_in_one_graph():
    # vq_impl=triton under torch.compile(fullgraph=True): the custom op is one opaque node, no graph break,
    # and the compiled step gives eager's codes and EMA update.
    import copy

    from models.vq import TritonCosineVQ

    torch.manual_seed(0)
    vq = TritonCosineVQ(dim=8, codebook_size=40).to(DEVICE).train()
    reference, before = copy.deepcopy(vq), vq.embed.clone()
    x = torch.randn(2, 11, 8, device=DEVICE, requires_grad=True)
    torch._dynamo.reset()
    out = torch.compile(vq, fullgraph=True)(x)
    torch.testing.assert_close(out, reference(x))
    assert not torch.equal(vq.embed, before)
    torch.testing.assert_close(vq.embed, reference.embed)
    torch.testing.assert_close(vq.cluster_size, reference.cluster_size)
