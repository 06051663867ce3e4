"""Each pathology's zero-shot probability for one CT volume.

    python -m ablations.infer --checkpoint OUT/checkpoints/<cell>/last.pt --volume scan.nii.gz
    python -m ablations.infer --checkpoint CKPT --volume scan.nii.gz --prompts "Pleural effusion" Emphysema

The volume is read and preprocessed exactly as the training loader reads one (ablations.data: HU from
the header or the given slope/intercept, resample to the size's voxels (upstream's 1.5 x 0.75 x 0.75 mm
at paper size, the same 360 mm field of view on coarser voxels below it), clip to [-1000, 1000] HU,
scale to [-1, 1], centre crop or pad to the model's input). The model, its size and the prompt
template are rebuilt from what the checkpoint recorded.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ablations.data.layout import SPLITS
from ablations.prompts import TEMPLATES
from bench.config import parse_with_config


def load_model(checkpoint: "str | Path", device: str = "cpu"):
    """(model in eval mode, size, tokenizer path, template name) from a training checkpoint."""
    from ablations.train import load_checkpoint

    return model_from_state(load_checkpoint(checkpoint), device, origin=str(checkpoint))


def model_from_state(state: dict, device: "str | torch.device" = "cpu", precision: "str | None" = None,
                     origin: str = "the checkpoint"):
    """(model in eval mode, size, tokenizer path, template name) rebuilt from a loaded `last.pt`, in
    `precision` if given (else the one it was trained in)."""
    from models import Size, Variant, build, make_current

    for key in ("model", "variant", "size"):
        if key not in state:
            raise ValueError(f"{origin} has no {key!r} entry; it was not written by ablations.train via "
                             "ablations.run")
    variant = Variant.from_dict(state["variant"])
    if precision:
        variant = variant.replace(precision=precision)
    size = Size(**state["size"])
    make_current(device)  # --device cuda:N: Triton kernels launch on the current device
    model = build(variant, size, device, text_weights=state.get("text_weights"))
    model.load_state_dict(state["model"])
    model.eval()
    return model, size, state.get("tokenizer"), (state.get("prompts") or {}).get("template", "present")


@dataclass(frozen=True)
class TreeMetadata:
    """What the training loader knows of a volume from the CT-RATE tree it sits in."""

    slope: "float | None" = None
    intercept: "float | None" = None
    spacing: "tuple[float, float, float] | None" = None  # the metadata CSV's (z, y, x) mm
    spacing_source: str = "header"  # "csv" in CT-RATE's original <split>/ folders (ablations.data.layout)


def preprocess(volume: "str | Path", size, slope: "float | None" = None, intercept: "float | None" = None,
               rescale: str = "auto", metadata: TreeMetadata = TreeMetadata()) -> torch.Tensor:
    """(1, 1, D, H, W) model input from a .nii.gz, by the loader's own functions."""
    from ablations.data.resample import preprocess_hu
    from ablations.data.volume_io import read_volume

    raw = read_volume(volume, slope, intercept, rescale, metadata.spacing, metadata.spacing_source)
    for note in raw.notes:
        print(f"note: {note}", file=sys.stderr)
    return preprocess_hu(raw.hu, raw.spacing, (size.depth, size.image_size, size.image_size))[None]


def tree_metadata(volume: Path) -> TreeMetadata:
    """Slope, intercept and spacing of `volume` from the metadata CSVs of the CT-RATE tree it sits in, if
    any: what the loader would use for the same file (read by its `read_csv`: a repeated name keeps its
    last row; CSV spacing for a volume of the original upload)."""
    from ablations.data.ctrate import csv_spacing, read_csv

    name = volume.name[: -len(".nii.gz")] if volume.name.endswith(".nii.gz") else volume.stem
    # The folders the path names come first: in a Hugging Face cache snapshot the volume is a symlink
    # into blobs/, outside the tree, so only the unresolved path leads to its metadata/ folder.
    for parent in dict.fromkeys([*volume.absolute().parents, *volume.resolve().parents]):
        for csv in sorted((parent / "metadata").glob("*_metadata.csv")):
            frame = read_csv(csv, ("VolumeName", "RescaleSlope", "RescaleIntercept"))
            if name in frame.index:
                row = frame.loc[name]
                # dataset/<split>/<patient>/<scan>/<file> is the original upload; <split>_fixed is v2.
                folder = volume.absolute().parents[2].name if len(volume.absolute().parents) > 2 else ""
                return TreeMetadata(float(row["RescaleSlope"]), float(row["RescaleIntercept"]), csv_spacing(row),
                                    "csv" if folder in SPLITS else "header")
    return TreeMetadata()


def main(argv: "list[str] | None" = None) -> int:
    from ablations.data.labels import ABNORMALITIES
    from ablations.data.volume_io import RESCALE_MODES

    p = argparse.ArgumentParser(prog="python -m ablations.infer", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="last.pt written by ablations.run")
    p.add_argument("--volume", type=Path, required=True, help="a CT volume (.nii.gz)")
    p.add_argument("--prompts", nargs="+", default=None, help="pathology names (default: the 18 CT-RATE labels)")
    p.add_argument("--template", choices=sorted(TEMPLATES), default=None,
                   help="prompt template (default: the one the checkpoint was evaluated with)")
    p.add_argument("--slope", type=float, default=None,
                   help="RescaleSlope (default: from the metadata CSV of the CT-RATE tree holding the volume)")
    p.add_argument("--intercept", type=float, default=None, help="RescaleIntercept from the metadata CSV, if any")
    p.add_argument("--rescale", choices=RESCALE_MODES, default="auto")
    p.add_argument("--device", default="cpu")
    args = parse_with_config(p, argv)
    for path, flag in ((args.checkpoint, "--checkpoint"), (args.volume, "--volume")):
        if not path.exists():
            print(f"error: {flag} {path} does not exist", file=sys.stderr)
            return 2
    from models.text import load_tokenizer, tokenize

    from ablations.zeroshot import encode_prompts, pair_probabilities

    try:
        model, size, tokenizer_path, template = load_model(args.checkpoint, args.device)
        metadata = tree_metadata(args.volume)
        slope, intercept = args.slope, args.intercept
        if slope is None and intercept is None:
            slope, intercept = metadata.slope, metadata.intercept
        volume = preprocess(args.volume, size, slope, intercept, args.rescale, metadata).to(args.device)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    classes = args.prompts or list(ABNORMALITIES)
    tokenizer = load_tokenizer(tokenizer_path)
    with torch.no_grad():
        prompts = encode_prompts(model, lambda t: tokenize(tokenizer, t, size.text_max_len, args.device), classes,
                                 args.template or template)
        probs = pair_probabilities(model, prompts, model.encode_image(volume).float())[0]
    width = max(len(c) for c in classes)
    print(f"{args.volume.name}  (template {args.template or template!r}; P(present) from softmax over the pair)")
    for c, prob in zip(classes, probs):
        print(f"  {c:<{width}}  {prob:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
