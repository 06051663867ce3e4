"""CT-CLIP's latent projections: the pooled image features and the text [CLS] state into the joint space.

The projection axis: how the two bias-free Linears run. `eager` calls the nn.Linear, as upstream; under
autocast that casts the fp32 weight to bf16, keeps the copy for backward and writes the weight gradient
in bf16 before casting it back (at paper size the image projection's 151 M parameters make that ~2.7 GB
of traffic and two 0.28 GiB transients for a product of 4 rows). `triton` streams the fp32 weight through
split-K kernels that round operands and results as autocast does (kernels/skinny_linear.py). Both use the
same nn.Linear parameters, so state dicts and upstream checkpoints interchange.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from models.norms import _kernels_reason
from models.registry import Registry

# (features (..., in), the bias-free nn.Linear holding the weight) -> (..., out)
PROJECTIONS: Registry[Callable[[torch.Tensor, nn.Linear], torch.Tensor]] = Registry("projection")


@PROJECTIONS.register("eager")
def eager(features: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """CT-CLIP's: the nn.Linear itself."""
    return linear(features)


@PROJECTIONS.register("triton", supports=_kernels_reason)
def triton(features: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """The same product from the fp32 weight where it lies, one Triton kernel each way (two backward)."""
    from kernels.skinny_linear import triton_skinny_linear

    if linear.bias is not None:
        raise ValueError("projection=triton computes CT-CLIP's bias-free projections; this Linear has a bias")
    return triton_skinny_linear(features, linear.weight)
