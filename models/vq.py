"""Cosine-similarity vector quantiser with an EMA codebook, as CT-CLIP v2 runs it.

Reproduces `vector_quantize_pytorch==1.1.2` (the version upstream CT-CLIP pins) with
`VectorQuantize(dim, codebook_size, use_cosine_sim=True)`:
- the codebook is a buffer (not a parameter), l2-normalised kaiming-uniform at init, EMA decay 0.8,
  no k-means init, no dead-code expiry (threshold 0);
- it runs in fp32 with autocast disabled: a (tokens x codes) cosine matrix, argmax per token, and the
  output is the stored code vector (unit norm at init, drifting slightly under EMA);
- training: straight-through gradients (output value = code, gradient = identity to the input), plus
  the EMA update, which builds the (tokens x codes) one-hot and a second tokens x codes x dim einsum
  exactly as upstream does (so memory and FLOPs are faithful);
- evaluation: the output is the code with no gradient path to the encoder;
- under torch.distributed the EMA's per-code counts and sums are summed over ranks before the update,
  as upstream's `sync_codebook` (on by default whenever a process group exists) does: every rank then
  holds the combined batch's codebook, so DDP's broadcast of rank 0's buffers loses nothing;
- the commitment loss is discarded by CT-CLIP and therefore not computed.

`vq_impl` picks how: `onehot` is upstream's computation above; `chunked` gives the same codes and the
same EMA update without the (tokens x codes) matrices: distances and argmax a slice of tokens at a
time, and the EMA's counts and sums by index_add. At paper size, batch 4, those matrices
are 55,296 x 8,192: 1.7 GiB of fp32 distances, a 3.4 GiB int64 one-hot and its 1.7 GiB fp32 copy.
`triton` is `chunked` with the search in one kernel (kernels/vq_nearest.py) whose scores use tf32
tensor cores and never leave registers: the same code wherever the best code leads the runner-up by
more than tf32's resolution of a cosine (4e-3 at worst); within that, either may be picked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.norms import _kernels_reason
from models.registry import Registry

VQ_IMPLS: Registry[type] = Registry("vq_impl")
CHUNK_TOKENS = 8192  # (8,192 x 8,192) fp32 distances: 256 MiB per slice


def _sum_over_ranks(*tensors: torch.Tensor) -> None:
    """In place, each tensor summed over the ranks of the default process group, if there is one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for tensor in tensors:
            dist.all_reduce(tensor)


def _needs_vq(variant, device: torch.device) -> "str | None":
    return None if variant.vq else "selects how the VQ computes; this variant has vq=off"


@VQ_IMPLS.register("onehot", doc="upstream: full distance matrix and one-hot EMA (the faithful choice)")
class CosineVQ(nn.Module):
    def __init__(self, dim: int, codebook_size: int, decay: float = 0.8) -> None:
        super().__init__()
        self.decay = decay
        self.codebook_size = codebook_size
        embed = torch.empty(1, codebook_size, dim)
        nn.init.kaiming_uniform_(embed)
        # Upstream buffer names and shapes (one codebook), so upstream checkpoints load unchanged.
        self.register_buffer("initted", torch.tensor([1.0]))
        self.register_buffer("cluster_size", torch.zeros(1, codebook_size))
        self.register_buffer("embed", F.normalize(embed, dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, dim) -> quantised (B, N, dim) in fp32."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            flat = F.normalize(x.reshape(-1, x.shape[-1]), dim=-1)
            codes = self.embed[0]
            # Upstream keeps its (tokens x codes) `dist` alive through the EMA update; so does `scores`.
            index, scores = self._nearest(flat, F.normalize(codes, dim=-1))
            quantized = F.embedding(index, codes).reshape(x.shape)
            if self.training:
                self._ema_update(flat, index, codes)
                quantized = x + (quantized - x).detach()
            return quantized

    def _nearest(self, flat: torch.Tensor, normed_codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each token's code, and the similarity matrix if one was built."""
        scores = flat @ normed_codes.t()
        return scores.argmax(dim=-1), scores

    def _counts_and_sums(self, flat: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens per code (codes,) and the sum of each code's tokens (codes, dim)."""
        onehot = F.one_hot(index, self.codebook_size).type(flat.dtype)
        return onehot.sum(dim=0), (flat.t() @ onehot).t()

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, index: torch.Tensor, codes: torch.Tensor) -> None:
        bins, embed_sum = self._counts_and_sums(flat, index)
        _sum_over_ranks(bins, embed_sum)
        self.cluster_size[0].lerp_(bins, 1 - self.decay)
        empty = bins == 0
        embed_mean = F.normalize(embed_sum / bins.masked_fill(empty, 1.0)[:, None], dim=-1)
        embed_mean = torch.where(empty[:, None], F.normalize(codes, dim=-1), embed_mean)
        self.embed[0].lerp_(embed_mean, 1 - self.decay)


@VQ_IMPLS.register("chunked", supports=_needs_vq,
                   doc="same codes and EMA without (tokens x codes) matrices: sliced argmax, index_add counts and sums")
class ChunkedCosineVQ(CosineVQ):
    def _nearest(self, flat: torch.Tensor, normed_codes: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.cat([(part @ normed_codes.t()).argmax(dim=-1) for part in flat.split(CHUNK_TOKENS)]), None

    def _counts_and_sums(self, flat: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # index_add rather than bincount: bincount's length depends on the data, which fake tensors
        # (bench.estimate) cannot know.
        bins = flat.new_zeros(self.codebook_size).index_add_(0, index, flat.new_ones(()).expand(len(index)))
        sums = flat.new_zeros(self.codebook_size, flat.shape[-1]).index_add_(0, index, flat)
        return bins, sums


def _vq_kernel_reason(variant, device: torch.device) -> "str | None":
    return _needs_vq(variant, device) or _kernels_reason(variant, device)


@VQ_IMPLS.register("triton", supports=_vq_kernel_reason,
                   doc="chunked's EMA; the search in one Triton kernel, tf32 scores never materialised")
class TritonCosineVQ(ChunkedCosineVQ):
    def _nearest(self, flat: torch.Tensor, normed_codes: torch.Tensor) -> tuple[torch.Tensor, None]:
        from kernels.vq_nearest import nearest_code

        # The argmax has no gradient; detaching keeps autograd from asking the custom op for a formula.
        return nearest_code(flat.detach(), normed_codes, "tf32"), None
