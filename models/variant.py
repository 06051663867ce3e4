"""`Variant` (which implementation of each part) and `Size` (how big the model and batch are).

A Variant is one choice per axis. The first value of every axis is the faithful CT-CLIP v2 choice, so
`Variant()` with no arguments *is* `Variant.faithful()`. Sizes are plain dataclass instances: the
presets below are just named instances, and any other configuration can be built for a test or an
experiment with `dataclasses.replace(SIZES["tiny"], dim=48)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Every axis and its valid values; the first value is CT-CLIP v2's own (the faithful choice).
AXES: dict[str, tuple[Any, ...]] = {
    "attention": ("math", "sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "flex", "flash_attn",
                  "xformers"),
    "position": ("cpb", "cpb_table", "rope", "none"),
    # `add_rmsnorm_triton`: the Triton RMSNorm with the residual add before it fused into its kernel.
    "norm": ("layernorm", "rmsnorm", "rmsnorm_triton", "add_rmsnorm_triton"),
    "mlp": ("geglu", "swiglu", "swiglu_triton", "geglu_triton", "swiglu_gemm", "geglu_gemm"),
    "loss": ("softmax", "siglip"),
    "text": ("bert-base", "minilm"),
    "vq": (True, False),
    # How the VQ computes (models/vq.py): upstream's one-hot matrices, the same result in slices, or
    # the slices' EMA with the nearest-code search in one Triton kernel (tf32 scores, never stored).
    "vq_impl": ("onehot", "chunked", "triton"),
    # How the temporal-stage PEG restores its 5-D grid. `upstream` reproduces CT-CLIP's raw reshape,
    # which (tokens laid out b,h,w,t) silently makes the conv's depth axis the image rows, its row axis
    # the columns and its column axis depth; `corrected` rearranges to the true (t, h, w) grid.
    "peg_layout": ("upstream", "corrected"),
    # How the PEG convolves (models/peg.py): pad + nn.Conv3d on a channels-first view, as upstream, or
    # one Triton kernel each way on the token stream where it lies (kernels/peg_conv.py).
    "peg_impl": ("conv3d", "triton"),
    # How the volume becomes normalised patches (models/patch_embed.py): a rearranged copy then
    # nn.LayerNorm, as upstream, or one Triton kernel each way reading the volume in place.
    "patch_embed": ("eager", "triton"),
    # How the two latent projections run (models/projection.py): nn.Linear under autocast, as upstream,
    # or split-K Triton kernels that read the fp32 weight in place and round as autocast does.
    "projection": ("eager", "triton"),
    # The visual residual stream's dtype under autocast (models/residual.py): fp32 as upstream keeps it,
    # or autocast's 16-bit dtype from each stage's entry on (Megatron-LM's default).
    "residual": ("fp32", "autocast"),
    "precision": ("fp32", "fp16", "bf16"),
    "checkpointing": (False, True),
    "compile": (False, True),
    # How AdamW applies the update (models/optimizers.py): torch's foreach path, or one fused kernel.
    "optimizer": ("adamw", "adamw_fused"),
    # How attention normalises, scales and rotates q and k (models/qk_norm.py): PyTorch ops or one kernel.
    "qk_norm": ("eager", "triton"),
}

# Abbreviations used in `Variant.key`; a key must stay stable because result files are named by it.
_KEY_ABBREV: dict[str, str] = {
    "attention": "attn", "position": "pos", "norm": "norm", "mlp": "mlp", "loss": "loss", "text": "text",
    "vq": "vq", "vq_impl": "vqimpl", "peg_layout": "peg", "peg_impl": "pegimpl", "patch_embed": "patch",
    "projection": "proj", "residual": "res",
    "precision": "prec", "checkpointing": "ckpt",
    "compile": "compile", "optimizer": "opt", "qk_norm": "qk",
}


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def parse_axis_value(axis: str, text: str) -> Any:
    """Turn a command-line string ("on", "bf16", "sdpa") into the typed value of `axis`."""
    if axis not in AXES:
        raise ValueError(f"unknown axis {axis!r}; valid axes: {', '.join(AXES)}")
    for value in AXES[axis]:
        if _format_value(value) == text or str(value) == text:
            return value
    lowered = text.lower()
    if isinstance(AXES[axis][0], bool) and lowered in {"true", "false", "1", "0", "yes", "no"}:
        return lowered in {"true", "1", "yes"}
    raise ValueError(
        f"invalid value {text!r} for axis {axis!r}; valid values: "
        f"{', '.join(_format_value(v) for v in AXES[axis])}"
    )


@dataclass(frozen=True)
class Variant:
    """One implementation choice per axis (see `AXES`); validated on construction."""

    attention: str = "math"
    position: str = "cpb"
    norm: str = "layernorm"
    mlp: str = "geglu"
    loss: str = "softmax"
    text: str = "bert-base"
    vq: bool = True
    vq_impl: str = "onehot"
    peg_layout: str = "upstream"
    peg_impl: str = "conv3d"
    patch_embed: str = "eager"
    projection: str = "eager"
    residual: str = "fp32"
    precision: str = "fp32"
    checkpointing: bool = False
    compile: bool = False
    optimizer: str = "adamw"
    qk_norm: str = "eager"

    def __post_init__(self) -> None:
        for axis, valid in AXES.items():
            value = getattr(self, axis)
            # bool is checked by identity so that 0/1 are not silently accepted for on/off axes.
            ok = any(value is v for v in valid) if isinstance(valid[0], bool) else value in valid
            if not ok:
                raise ValueError(
                    f"invalid value {value!r} for axis {axis!r}; valid values: "
                    f"{', '.join(_format_value(v) for v in valid)}"
                )

    @classmethod
    def faithful(cls) -> "Variant":
        """CT-CLIP v2 exactly as upstream computes it."""
        return cls()

    @classmethod
    def modern(cls) -> "Variant":
        """The seed project's all-on row: FlashAttention + SwiGLU + RMSNorm + SigLIP.

        The flash kernels cannot take CT-CLIP's learned position bias, and the seed's "modern" model
        dropped it (in fact both of its rows did), so position is `none` here. Everything else (QK-norm
        with scale 8, VQ, the text tower) stays faithful so that the row differs only in the switches.
        """
        return cls(attention="sdpa_flash", position="none", norm="rmsnorm", mlp="swiglu", loss="siglip")

    def replace(self, **changes: Any) -> "Variant":
        return dataclasses.replace(self, **changes)

    def changed_axes(self, other: "Variant | None" = None) -> dict[str, Any]:
        """Axes where this variant differs from `other` (default: the faithful variant)."""
        base = other or Variant.faithful()
        return {axis: getattr(self, axis) for axis in AXES if getattr(self, axis) != getattr(base, axis)}

    @property
    def key(self) -> str:
        """A short stable name: `faithful`, or the changed axes such as `attn=sdpa_flash,mlp=swiglu`."""
        changed = self.changed_axes()
        if not changed:
            return "faithful"
        return ",".join(f"{_KEY_ABBREV[a]}={_format_value(v)}" for a, v in changed.items())

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Variant":
        unknown = set(values) - set(AXES)
        if unknown:
            raise ValueError(f"unknown axis {sorted(unknown)[0]!r}; valid axes: {', '.join(AXES)}")
        return cls(**values)


@dataclass(frozen=True)
class Size:
    """Every dimension of the model and the batch. The presets in `SIZES` are plain instances."""

    name: str
    # Volume (channels, depth, height, width) and its patching.
    depth: int
    image_size: int
    patch_size: int
    temporal_patch_size: int
    channels: int = 1
    # Visual transformer.
    dim: int = 512
    spatial_depth: int = 4
    temporal_depth: int = 4
    heads: int = 8
    dim_head: int = 32
    ff_mult: float = 4.0
    codebook_size: int = 8192
    # Text tower: BERT configuration (the `bert-base` switch; `minilm` brings its own architecture).
    text_layers: int = 12
    text_hidden: int = 768
    text_heads: int = 12
    text_intermediate: int = 3072
    text_vocab_size: int = 30522
    text_max_len: int = 512
    text_dropout: float = 0.25
    # Joint latent space and batch.
    dim_latent: int = 512
    batch: int = 4
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.depth % self.temporal_patch_size or self.image_size % self.patch_size:
            raise ValueError(
                f"size {self.name!r}: volume {self.depth}x{self.image_size}x{self.image_size} is not "
                f"divisible by patch {self.temporal_patch_size}x{self.patch_size}x{self.patch_size}"
            )
        if self.text_hidden % self.text_heads:
            raise ValueError(f"size {self.name!r}: text_hidden {self.text_hidden} not divisible by heads")

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (depth, height, width) after patch embedding."""
        side = self.image_size // self.patch_size
        return (self.depth // self.temporal_patch_size, side, side)

    @property
    def patch_dim(self) -> int:
        return self.channels * self.temporal_patch_size * self.patch_size * self.patch_size

    @property
    def ff_inner(self) -> int:
        # CT-CLIP's FeedForward: int(mult * 2/3 * dim), e.g. 1365 for dim 512.
        return int(self.ff_mult * (2 / 3) * self.dim)

    @property
    def dim_image(self) -> int:
        """Width of the flattened, depth-pooled visual features fed to the image projection."""
        _, h, w = self.grid
        return h * w * self.dim

    @property
    def volume_shape(self) -> tuple[int, int, int, int]:
        return (self.channels, self.depth, self.image_size, self.image_size)

    def replace(self, **changes: Any) -> "Size":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PAPER = Size(
    name="paper", depth=240, image_size=480, patch_size=20, temporal_patch_size=10,
    notes="CT-CLIP v2: 240x480x480 volume, 24^3 tokens, CXR-BERT text at 512 tokens, batch 4",
)
SIZES: dict[str, Size] = {
    "paper": PAPER,
    "paper16": PAPER.replace(name="paper16", batch=16, notes="the seed project's reported runs (batch 16)"),
    # Half the volume per side (12^3 tokens), full-width transformer, shorter text: a GPU-minutes size.
    "small": PAPER.replace(
        name="small", depth=120, image_size=240, text_max_len=128, batch=2,
        notes="half-resolution volume (12^3 tokens), paper-width model, 128 text tokens",
    ),
    # A CPU-sized model for tests and CI. The grid is deliberately not cubic (3x5x5) so that a wrong
    # reshape between the spatial and temporal stages cannot go unnoticed, and the FF width (85) and
    # head count are odd-sized for the same reason.
    "tiny": Size(
        name="tiny", depth=12, image_size=40, patch_size=8, temporal_patch_size=4,
        dim=32, spatial_depth=2, temporal_depth=2, heads=2, dim_head=16, codebook_size=64,
        text_layers=2, text_hidden=32, text_heads=2, text_intermediate=64, text_max_len=24,
        dim_latent=16, batch=4, notes="CPU test model: 3x5x5 token grid, dim 32",
    ),
}


def get_size(name_or_size: "str | Size") -> Size:
    if isinstance(name_or_size, Size):
        return name_or_size
    try:
        return SIZES[name_or_size]
    except KeyError:
        raise ValueError(f"unknown size {name_or_size!r}; valid sizes: {', '.join(SIZES)}") from None
