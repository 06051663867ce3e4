"""CT-CLIP's self-attention block, with the kernel chosen by the `attention` axis.

Faithful details (upstream `transformer_maskgit/attention.py`):
- only the *query* path is normalised: K and V are projected from the un-normalised residual stream;
- q and k are L2-normalised per head and multiplied by learnable per-dimension scales (ones at init);
- the logits are multiplied by a fixed scale of 8 (not 1/sqrt(d)): 8 x scaled cosine similarity;
- no causal mask, no null key/values (upstream allocates a (heads, 0, dim_head) `null_kv`, i.e. nothing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from models.attention_backends import ATTENTION
from models.norms import make_norm
from models.position import SpatialPosition, apply_rotary

LOGIT_SCALE = 8.0


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, norm: str, backend: str) -> None:
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

    def forward(self, x: torch.Tensor, position: "SpatialPosition | None" = None) -> torch.Tensor:
        kv_input = x
        q = self.to_q(self.norm(x))
        k, v = self.to_kv(kv_input).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        q = F.normalize(q, dim=-1) * self.q_scale
        k = F.normalize(k, dim=-1) * self.k_scale
        bias = None
        if position is not None:
            if position.rope is not None:
                q, k = apply_rotary(q, position.rope), apply_rotary(k, position.rope)
            bias = position.bias
        out = self._attend(q, k, v, bias, LOGIT_SCALE)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))
