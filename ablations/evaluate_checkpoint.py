"""Zero-shot evaluation of a finished model, without training: a checkpoint of ours or upstream CT-CLIP's.

    python -m ablations.evaluate_checkpoint --checkpoint OUT/checkpoints/<cell>/last.pt --data DIR
    python -m ablations.evaluate_checkpoint --checkpoint CT-CLIP_v2.pt \
        --tokenizer BiomedVLP-CXR-BERT-specialized/ --data CT-RATE/ --device cuda

One split (default `valid`) is read, scored and summarised as `ablations.run` does after training: the
same loader, prompts, metric protocols (`ctclip`, `clean`, `maxf1`) and patient-level bootstrap; the
`clean` thresholds are fitted on the same held-out training patients when the tree has a train split
(fixed at 0.5 otherwise, as with `--calibration-fraction 0`). One accuracy row (docs/accuracy-schema.md,
design `checkpoint`) goes to OUT/accuracy.jsonl with its per-volume scores, so `reports.build` tables it
and `ablations.paired` can compare it with any row scored on the same volumes.

An upstream file (a plain state dict of `visual_transformer.*` and `text_transformer.*` tensors) is
loaded into the faithful variant at paper size by `models.checkpoint.load_upstream_checkpoint`. Its text
tower is BiomedVLP-CXR-BERT-specialized, so `--tokenizer` must name that model's local folder: the
offline default vocabulary would give its embeddings other token ids.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ablations.bootstrap import BootstrapSpec
from ablations.evaluate import add_evaluation_arguments, evaluate_model
from ablations.infer import model_from_state
from ablations.paired import save_scores
from ablations.prompts import TEMPLATES, get_template
from ablations.result import AccuracyResult, accuracy_cell_key, append_row, read_rows, row_environment, write_reports
from ablations.tree_info import Subset, describe_data, file_stem, open_split, split_calibration
from bench.config import parse_with_config

UPSTREAM = "upstream CT-CLIP"
OURS = "ablations.run"


@dataclass
class LoadedCheckpoint:
    """A model ready to score, and what its row should say about where it came from."""

    model: torch.nn.Module
    size: object  # models.Size
    source: str  # UPSTREAM or OURS
    tokenizer: "str | None"
    template: str
    seed: int  # the training seed (0 for an upstream file, which does not record one)
    steps: "int | None"  # training steps the checkpoint had taken, where it records them
    sha256: str  # first 16 hex digits of the file's SHA-256


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def is_upstream_state_dict(state: object) -> bool:
    """Whether `state` is upstream CT-CLIP's state dict (with or without DataParallel's `module.`)."""
    if not isinstance(state, dict) or not state:
        return False
    tops = {str(k).removeprefix("module.").split(".", 1)[0] for k in state}
    return {"visual_transformer", "text_transformer"} <= tops


def load_for_evaluation(path: Path, device: "str | torch.device" = "cpu", upstream_size: str = "paper",
                        precision: "str | None" = None, tokenizer: "str | None" = None) -> LoadedCheckpoint:
    """The model of a `last.pt` written by `ablations.run` or of an upstream CT-CLIP file, in eval mode.

    `precision` overrides the one the model was trained in (upstream: fp32); `tokenizer` overrides the
    folder a checkpoint of ours recorded and is required for an upstream file."""
    sha = file_sha256(path)
    # Tensors, numbers, strings and containers only: a downloaded file cannot run code while loading.
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state:
        model, size, recorded_tokenizer, template = model_from_state(state, device, precision, origin=str(path))
        seed = int((state.get("train_config") or {}).get("seed", 0))
        return LoadedCheckpoint(model, size, OURS, tokenizer or recorded_tokenizer, template, seed,
                                state.get("step"), sha)
    if not is_upstream_state_dict(state):
        raise ValueError(f"{path} is neither a checkpoint written by ablations.run (no 'model' entry) nor an "
                         "upstream CT-CLIP state dict (no visual_transformer.* and text_transformer.* keys)")
    if tokenizer is None:
        raise ValueError("an upstream CT-CLIP checkpoint needs --tokenizer: the local folder of "
                         "microsoft/BiomedVLP-CXR-BERT-specialized, whose vocabulary its text tower was trained on")
    from models import Variant, build, get_size, make_current
    from models.checkpoint import load_upstream_checkpoint

    variant = Variant.faithful().replace(precision=precision or "fp32")
    size = get_size(upstream_size)
    make_current(device)
    model = build(variant, size, device)
    load_upstream_checkpoint(model, state)
    model.eval()
    # Upstream's zero-shot script asks "<pathology> is present." against "... is not present.".
    return LoadedCheckpoint(model, size, UPSTREAM, tokenizer, "present", 0, None, sha)


def calibration_set(root: Path, split: str, size, rescale: str, skip_bad: bool, fraction: float):
    """(held-out training patients' volumes or None, how many): the ones `ablations.run` holds out with
    the same fraction, so a `clean` figure here and there uses the same thresholds' data."""
    from ablations.data.errors import DataError

    if split != "valid" or fraction <= 0:
        return None, 0
    try:
        train = open_split(root, "train", size, rescale, skip_bad)
    except (DataError, OSError) as error:
        print(f"note: no calibration volumes ({error}); the clean protocol uses a fixed 0.5 threshold")
        return None, 0
    _, held = split_calibration(train, fraction)
    return (Subset(train, held) if held else None), len(held)


def build_parser() -> argparse.ArgumentParser:
    from ablations.data.volume_io import RESCALE_MODES  # lazily: the data package needs nibabel

    p = argparse.ArgumentParser(prog="python -m ablations.evaluate_checkpoint", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="last.pt written by ablations.run, or upstream CT-CLIP's state dict (CT-CLIP_v2.pt)")
    p.add_argument("--data", type=Path, required=True,
                   help="CT-RATE tree (folder holding dataset/), or shards prepared from one (ablations.data.prepare)")
    p.add_argument("--split", choices=["valid", "train"], default="valid")
    p.add_argument("--out", type=Path, default=Path("results/evaluation"), help="folder for rows and scores")
    p.add_argument("--label", default=None,
                   help="name of the row's variant after '@' (default: the file's stem for an upstream file, "
                        "'checkpoint' for ours); rows sharing a label and variant are averaged as seeds")
    p.add_argument("--upstream-size", default="paper", help="size an upstream file's weights are built at")
    p.add_argument("--precision", default=None, help="fp32 | bf16 | fp16 (default: the checkpoint's; upstream fp32)")
    p.add_argument("--tokenizer", default=None,
                   help="local tokenizer folder (needed for upstream; default for ours: the one it recorded)")
    p.add_argument("--template", choices=sorted(TEMPLATES), default=None,
                   help="prompt template (default: the checkpoint's; upstream: present)")
    add_evaluation_arguments(p)
    p.add_argument("--loader-workers", type=int, default=0, help="processes reading volumes ahead of the model")
    p.add_argument("--skip-bad", action="store_true", help="log and leave out unreadable or unlabelled volumes")
    p.add_argument("--rescale", default="auto", choices=RESCALE_MODES,
                   help="apply the metadata CSV's slope/intercept: auto (detect HU), always, never (a tree only: "
                        "shards were rescaled when prepared)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-resume", action="store_true", help="evaluate again even if the row exists")
    p.add_argument("--reports", nargs="*", default=["md", "csv"], help="formats for reports.build (none: skip)")
    return p


def main(argv: "list[str] | None" = None) -> int:
    from ablations.data.errors import DataError
    from ablations.data.labels import ABNORMALITIES
    from ablations.data.layout import SPLITS
    from models.checkpoint import CheckpointError
    from models.text import load_tokenizer, tokenize

    args = parse_with_config(build_parser(), argv)
    if not args.checkpoint.is_file():
        print(f"error: --checkpoint {args.checkpoint} does not exist", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    try:
        loaded = load_for_evaluation(args.checkpoint, device, args.upstream_size, args.precision, args.tokenizer)
        template = get_template(args.template or loaded.template)
        eval_set = open_split(args.data, args.split, loaded.size, args.rescale, args.skip_bad)
        tokenizer = load_tokenizer(loaded.tokenizer)
    except (ValueError, OSError, CheckpointError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    calibration, n_calibration = None, 0
    if "clean" in args.protocols:
        calibration, n_calibration = calibration_set(args.data, args.split, loaded.size, args.rescale,
                                                     args.skip_bad, args.calibration_fraction)
    label = args.label or (args.checkpoint.stem if loaded.source == UPSTREAM else "checkpoint")
    variant = loaded.model.variant
    variant_key = f"{variant.key}@{label}"
    splits_read = [s for s in SPLITS if s == args.split or (s == "train" and calibration is not None)]
    data = {**describe_data(args.data, splits_read), "n_calibration": n_calibration,
            "n_eval": len(eval_set), "split": args.split}
    key = (accuracy_cell_key(variant_key, loaded.size.name, loaded.seed, data["name"])
           + f"|{args.split}|{template.name}|sha{loaded.sha256}")
    rows_path = args.out / "accuracy.jsonl"
    if not args.no_resume and any(r["cell_key"] == key and r.get("status") == "ok" for r in read_rows(rows_path)):
        print(f"skip {key}: already in {rows_path} (--no-resume evaluates again)")
        return 0

    tok = lambda texts: tokenize(tokenizer, texts, loaded.size.text_max_len, device)  # noqa: E731
    started = time.perf_counter()
    blocks, roc, scores = evaluate_model(loaded.model, eval_set, tok, list(ABNORMALITIES), template.name,
                                         args.protocols, BootstrapSpec(args.bootstrap, args.bootstrap_seed),
                                         calibration, args.eval_batch, args.loader_workers)
    scores_file = f"scores/{file_stem(key)}.npz"
    save_scores(args.out / scores_file, scores)
    device_block, env, git = row_environment(device)
    device_block["count"] = 1 if device.type == "cuda" else torch.get_num_threads()
    # `steps` is what the checkpoint had trained (None for upstream's); `precision` what it was scored in.
    training = {"steps": loaded.steps, "precision": variant.precision, "source": loaded.source,
                "checkpoint": str(args.checkpoint), "checkpoint_sha256": loaded.sha256,
                "eval_wall_s": round(time.perf_counter() - started, 3)}
    row = AccuracyResult(cell_key=key, variant_key=variant_key, variant=variant.as_dict(), size=loaded.size.name,
                         size_config=loaded.size.as_dict(), batch=args.eval_batch, seed=loaded.seed, status="ok",
                         design="checkpoint", device=device_block, data=data, training=training,
                         prompts=template.as_dict(), classes=list(ABNORMALITIES), protocols=blocks, roc=roc,
                         scores_file=scores_file, env=env, git=git)
    append_row(rows_path, row)
    for name, block in blocks.items():
        auroc = block["macro"]["auroc"]
        if auroc["value"] is None:
            print(f"{key}: {name} macro AUROC undefined (no class has both labels among the volumes)")
            continue
        interval = (f" [{auroc['ci_low']:.3f}, {auroc['ci_high']:.3f}]" if auroc.get("ci_low") is not None else "")
        print(f"{key}: {name} macro AUROC {auroc['value']:.3f}{interval}")
    write_reports(rows_path, args.out, args.reports)
    print(f"rows: {rows_path}; scores: {args.out / scores_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
