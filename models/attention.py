"""CT-CLIP's self-attention block, with the kernel chosen by the `attention` axis.

Faithful details (upstream `transformer_maskgit/attention.py`):
- only the *query* path is normalised: K and V are projected from the un-normalised residual stream;
- q and k are L2-normalised per head and multiplied by learnable per-dimension scales (ones at init),
  then rotated when the position axis is RoPE: `models/qk_norm.py`, eager or one Triton kernel;
- the logits are multiplied by a fixed scale of 8 (not 1/sqrt(d)): 8 x scaled cosine similarity;
- no causal mask, no null key/values (upstream allocates a (heads, 0, dim_head) `null_kv`, i.e. nothing).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from models.attention_backends import ATTENTION
from models.norms import make_norm
from models.position import SpatialPosition
from models.qk_norm import QK_NORMS

LOGIT_SCALE = 8.0


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, norm: str, backend: str,
                 qk_norm: str = "eager") -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm = make_norm(norm, dim, "attn")
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.backend = backend
        self._attend = ATTENTION.get(backend).impl
        self._qk_norm = QK_NORMS.get(qk_norm).impl

    def forward(self, x: torch.Tensor, position: "SpatialPosition | None" = None) -> torch.Tensor:
        return self.attend(self.norm(x), x, position)

    def attend(self, q_input: torch.Tensor, kv_input: torch.Tensor,
               position: "SpatialPosition | None" = None) -> torch.Tensor:
        """Attention from the normalised stream (queries) and the stream itself (keys and values): the
        entry `models.transformer.Layer` uses when the norm is fused with the residual add before it."""
        q = self.to_q(q_input)
        k, v = self.to_kv(kv_input).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        rope = position.rope if position is not None else None
        q, k = self._qk_norm(q, self.q_scale, rope), self._qk_norm(k, self.k_scale, rope)
        bias = position.bias if position is not None else None
        out = self._attend(q, k, v, bias, LOGIT_SCALE)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))
