"""Load an upstream CT-CLIP v2 checkpoint (`CT-CLIP_v2.pt`) into this package's model.

Upstream names are mapped to ours by the ordered rules below. Keys upstream registers but never uses on
the CLIP path are dropped by name (and nothing else is): `*_extra` latent projections, the first-frame
patch embedder and both to-pixels heads, the cross-attention `context_norm`s, the BERT pooler, the
empty `null_kv` tensors, the all-zero `beta` buffers of the bias-less LayerNorms, and `position_ids`
(non-persistent in newer transformers, the cause of upstream issue #47). Any other key that matches no
rule, any of our parameters left unfilled and any shape mismatch fails with a message listing them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch

from models.ctclip import CTCLIP

# (pattern, replacement) applied in order to every kept key; `None` as replacement means "drop".
_DROP_UNUSED: list[tuple[str, str]] = [
    (r"^text_transformer\.embeddings\.position_ids$", "position_ids is a non-persistent buffer now"),
    (r"^text_transformer\.pooler\.", "the BERT pooler is never used ([CLS] hidden state is)"),
    (r"^to_(text|visual)_latent_extra\.", "extra latent projections are never used"),
    (r"^visual_transformer\.(to_patch_emb_first_frame|to_pixels_first_frame|to_pixels)\.",
     "first-frame embedder and to-pixels heads are never used on the CLIP path"),
    (r"\.context_norm\.(gamma|beta)$", "cross-attention context norms are never used"),
]
_RENAMES: list[tuple[str, str]] = [
    (r"^text_transformer\.", "text_encoder."),
    (r"^visual_transformer\.spatial_rel_pos_bias\.", "visual_encoder.position."),
    (r"^visual_transformer\.to_patch_emb\.1\.", "visual_encoder.patch_embed.norm_in."),
    (r"^visual_transformer\.to_patch_emb\.2\.", "visual_encoder.patch_embed.proj."),
    (r"^visual_transformer\.to_patch_emb\.3\.", "visual_encoder.patch_embed.norm_out."),
    (r"^visual_transformer\.enc_spatial_transformer\.", "visual_encoder.spatial."),
    (r"^visual_transformer\.enc_temporal_transformer\.", "visual_encoder.temporal."),
    (r"^visual_transformer\.vq\._codebook\.", "visual_encoder.vq."),
    (r"\.layers\.(\d+)\.0\.dsconv\.", r".layers.\1.peg.conv."),
    (r"\.layers\.(\d+)\.1\.", r".layers.\1.attn."),
    (r"\.layers\.(\d+)\.3\.0\.", r".layers.\1.ff.norm."),
    (r"\.layers\.(\d+)\.3\.1\.", r".layers.\1.ff.proj_in."),
    (r"\.layers\.(\d+)\.3\.4\.", r".layers.\1.ff.proj_out."),
    (r"\.(norm|norm_out)\.gamma$", r".\1.weight"),
]
_ZERO_BETA = re.compile(r"\.(norm|norm_out)\.beta$")
_NULL_KV = re.compile(r"\.null_kv$")
_REQUIRED_AXES = {"norm": ("layernorm",), "position": ("cpb", "cpb_table"), "text": ("bert-base",)}


class CheckpointError(ValueError):
    pass


def map_upstream_state_dict(upstream: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Upstream CT-CLIP names -> ours. Returns (mapped state dict, {dropped key: why})."""
    mapped: dict[str, torch.Tensor] = {}
    dropped: dict[str, str] = {}
    for key, value in upstream.items():
        name = key[len("module."):] if key.startswith("module.") else key
        why = next((reason for pattern, reason in _DROP_UNUSED if re.search(pattern, name)), None)
        if why is None and _NULL_KV.search(name):
            if value.numel():
                raise CheckpointError(f"{key}: self-attention null key/values are not empty {tuple(value.shape)}")
            why = "self-attention has no null key/values (the tensor is empty)"
        if why is None and _ZERO_BETA.search(name):
            if torch.count_nonzero(value):
                raise CheckpointError(f"{key}: the bias-less LayerNorm's beta buffer is not zero")
            why = "bias-less LayerNorm: beta is an all-zero buffer"
        if why is not None:
            dropped[key] = why
            continue
        for pattern, replacement in _RENAMES:
            name = re.sub(pattern, replacement, name)
        mapped[name] = value
    return mapped, dropped


def load_upstream_checkpoint(model: CTCLIP, source: "str | Path | Mapping[str, torch.Tensor]") -> dict[str, str]:
    """Fill `model` from an upstream CT-CLIP v2 state dict or `.pt` file. Returns the dropped keys."""
    for axis, allowed in _REQUIRED_AXES.items():
        if getattr(model.variant, axis) not in allowed:
            raise CheckpointError(
                f"upstream CT-CLIP weights need {axis} in {allowed}; "
                f"this model has {axis}={getattr(model.variant, axis)}"
            )
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        upstream = torch.load(path, map_location="cpu", weights_only=True)
    else:
        upstream = source
    mapped, dropped = map_upstream_state_dict(upstream)
    if model.visual_encoder.vq is None:
        for key in [k for k in mapped if k.startswith("visual_encoder.vq.")]:
            dropped[key] = "this variant runs without VQ"
            del mapped[key]

    ours = model.state_dict()
    unexpected = sorted(set(mapped) - set(ours))
    missing = sorted(set(ours) - set(mapped))
    wrong_shape = sorted(f"{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(ours[k].shape)}"
                         for k in set(mapped) & set(ours) if mapped[k].shape != ours[k].shape)
    problems = [("keys the mapping does not know", unexpected), ("model keys the checkpoint lacks", missing),
                ("shape mismatches", wrong_shape)]
    if any(items for _, items in problems):
        lines = [f"{title} ({len(items)}): {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"
                 for title, items in problems if items]
        raise CheckpointError("cannot load the upstream checkpoint:\n  " + "\n  ".join(lines))
    model.load_state_dict(mapped, strict=True)
    return dropped
