"""Short contrastive training runs and their zero-shot evaluation, one result row per (variant, seed).

    python -m ablations.run --design paper --size tiny --data DIR --steps 300 --seeds 3 --out results/acc
    python -m ablations.run --config configs/acc-tiny.yaml --seeds 1    # the flags of a file, one overridden
    torchrun --nproc-per-node 2 -m ablations.run ...      (DDP; negatives from every rank)

For each variant of a design (bench.design's `paper`, `ofat`, `loo`, `full`, or an explicit
`--variants` list) and each seed: train on the `train` split of a CT-RATE tree (real, or synthetic from
`python -m ablations.data.synthetic`), evaluate zero-shot on the `valid` split under the `ctclip`,
`clean` and `maxf1` protocols with bootstrap CIs, and append one row (docs/accuracy-schema.md) to
OUT/accuracy.jsonl with a CSV beside it. Each row's per-volume scores go to OUT/scores/<cell>.npz, and
every non-baseline row carries its paired AUROC difference from the baseline of the same seed
(ablations.paired), so a gap like the seed's 0.604 -> 0.620 comes with an interval. Resumable: a
finished (variant, seed) is skipped; an interrupted one restarts from OUT/checkpoints/<cell>/last.pt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from ablations.autocast_policy import POLICIES, AutocastPolicy, autocast_policy
from ablations.bootstrap import BootstrapSpec
from ablations.distributed import DistContext, init_from_env
from ablations.evaluate import add_evaluation_arguments, evaluate_model, patient_groups
from ablations.loading import NextGood, loader
from ablations.paired import load_scores, paired_auroc, save_scores
from ablations.prompts import TEMPLATES, get_template
from ablations.result import (AccuracyResult, accuracy_cell_key, append_row, read_rows, row_environment,
                              write_reports)
from ablations.summary import format_summary, seed_summary
from ablations.train import Diverged, TrainConfig, seed_everything, train
from ablations.tree_info import Subset, describe_data, file_stem, open_split, split_calibration
from ablations.variants import CellSpec, cells_from_args
from bench.config import parse_with_config

CACHE_LIMIT_BYTES = 4 * 2**30  # hold a split in memory (decoded once for all variants and seeds) below this


def _cached(dataset, size, workers: int = 0) -> Any:
    n_bytes = len(dataset) * 4 * size.channels * size.depth * size.image_size ** 2
    if n_bytes > CACHE_LIMIT_BYTES:
        return dataset
    return [s for batch in loader(dataset, batch=16, workers=workers) for s in batch if s is not None]


def run_cell(cell: CellSpec, seed: int, key: str, policy: AutocastPolicy, args, size, splits: dict,
             dist: DistContext, device: torch.device, out: Path, data_info: dict, envs: tuple) -> AccuracyResult:
    from models import build, supports
    from models.text import load_tokenizer, tokenize

    variant = cell.variant
    template = get_template(args.template)
    base = dict(cell_key=key, variant_key=variant.key, variant=variant.as_dict(), size=size.name,
                size_config=size.as_dict(), batch=args.batch, seed=seed, design=cell.design, baseline=cell.baseline,
                device=envs[0], data=data_info, prompts=template.as_dict(), env=envs[1], git=envs[2])
    cfg = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, warmup_steps=args.warmup_steps,
                      min_lr_ratio=args.min_lr_ratio, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
                      seed=seed, checkpoint_every=args.checkpoint_every, siglip_impl=args.siglip_impl,
                      text_lr_scale=args.text_lr_scale)
    training = {"steps": args.steps, "lr": args.lr, "warmup_steps": args.warmup_steps,
                "text_lr_scale": args.text_lr_scale, "precision": variant.precision,
                "autocast_policy": policy.name, "world_size": dist.world_size}
    reason = supports(variant, device)
    if reason:
        return AccuracyResult(status="unsupported", reason=reason, training=training, **base)
    seed_everything(seed)
    model = build(variant, size, device, text_weights=args.text_weights)
    tokenizer = load_tokenizer(args.tokenizer)
    tok = lambda texts: tokenize(tokenizer, texts, size.text_max_len, device)  # noqa: E731
    extra = {"variant": variant.as_dict(), "size": size.as_dict(), "tokenizer": args.tokenizer,
             "text_weights": args.text_weights, "prompts": template.as_dict()}
    try:
        with policy.context():
            result = train(model, splits["train"], tok, cfg, out / "checkpoints" / file_stem(key), dist, extra,
                           progress=not args.quiet, workers=args.loader_workers)
    except Diverged as error:
        return AccuracyResult(status="diverged", message=str(error), training=training, **base)
    training.update(wall_s=round(result.wall_s, 3), final_loss=result.final_loss, resumed_from=result.resumed_from)
    with policy.context():
        blocks, roc, scores = evaluate_model(model, splits["valid"], tok, data_info["classes"], args.template,
                                             args.protocols, BootstrapSpec(args.bootstrap, args.bootstrap_seed),
                                             splits.get("calibration"), args.eval_batch, args.loader_workers)
    scores_file = None
    if dist.is_main:
        scores_file = f"scores/{file_stem(key)}.npz"
        save_scores(out / scores_file, scores)
    return AccuracyResult(status="ok", training=training, loss_curve=result.loss_curve,
                          classes=list(data_info["classes"]), protocols=blocks, roc=roc, scores_file=scores_file,
                          **base)


def _same_autocast(row: dict, result: AccuracyResult) -> bool:
    """Whether a baseline row ran under the same autocast policy as `result`, or either ran none (fp32),
    or the row predates the field: rows of a CPU's own policy never pair with emulated-CUDA ones."""
    theirs, ours = (row.get("training") or {}).get("autocast_policy"), result.training.get("autocast_policy")
    return theirs in (None, "none", ours) or ours in (None, "none")


def compare_with_baseline(result: AccuracyResult, rows: list[dict], out: Path, spec: BootstrapSpec) -> None:
    """Attach the paired AUROC difference from the baseline row of the same seed, size and data (the
    design's first cell, run before the others), when that row finished and kept its scores."""
    if result.baseline or result.status != "ok" or not result.scores_file:
        return
    base = next((r for r in reversed(rows) if r.get("baseline") and r.get("status") == "ok"
                 and r.get("seed") == result.seed and r.get("size") == result.size
                 and (r.get("data") or {}).get("name") == result.data.get("name") and r.get("scores_file")
                 and _same_autocast(r, result)), None)
    if base is None or not (out / base["scores_file"]).exists():
        return
    candidate = load_scores(out / result.scores_file)
    try:
        comparison = paired_auroc(candidate, load_scores(out / base["scores_file"]),
                                  patient_groups(candidate.names), spec)
    except ValueError as error:  # e.g. the baseline was evaluated on another split
        print(f"note: no paired comparison for {result.cell_key}: {error}")
        return
    result.vs_baseline = {"baseline_key": base["variant_key"], "baseline_cell_key": base["cell_key"], **comparison}


def build_parser() -> argparse.ArgumentParser:
    # Imported here, as the data package is in main(): it needs nibabel, which the GPU image lacks, and
    # the GPU run's pytest collects the modules that import this one.
    from ablations.data.volume_io import RESCALE_MODES

    p = argparse.ArgumentParser(prog="python -m ablations.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, required=True,
                   help="CT-RATE tree (folder holding dataset/), or shards prepared from one at --size "
                        "(python -m ablations.data.prepare; read as stored, float16)")
    p.add_argument("--loader-workers", type=int, default=0,
                   help="processes that read and resample volumes ahead of the model (0: in this one); "
                        "real CT-RATE needs several: a paper-size volume takes ~4 s of a core")
    p.add_argument("--skip-bad", action="store_true",
                   help="log and leave out unreadable volumes and volumes without a label or report row "
                        "(training takes the next good volume in a bad one's place)")
    p.add_argument("--rescale", default="auto", choices=RESCALE_MODES,
                   help="apply the metadata CSV's slope/intercept: auto (detect HU), always, never (a tree only: "
                        "shards were rescaled when prepared)")
    p.add_argument("--out", type=Path, default=Path("results/accuracy"), help="folder for rows, curves, checkpoints")
    p.add_argument("--design", default=None, help="paper | ofat | loo | full (bench.design)")
    p.add_argument("--variants", nargs="+", default=None,
                   help="explicit list instead of a design, e.g. faithful modern 'modern,loss=softmax'")
    p.add_argument("--only", nargs="*", default=[], help="AXIS=V1,V2 filters (as bench.run)")
    p.add_argument("--exclude", nargs="*", default=[], help="AXIS=V filters dropping cells")
    p.add_argument("--precision", default=None, help="set every cell's precision: fp32 | fp16 | bf16")
    p.add_argument("--size", default="tiny", help="tiny | small | paper")
    p.add_argument("--text-max-len", type=int, default=None, help="override the size's text length")
    p.add_argument("--size-set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="override fields of the size, e.g. text_dropout=0 codebook_size=512 (the size is "
                        "renamed after them so its rows never mix with the preset's)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (or --seed-list)")
    p.add_argument("--seed-list", type=int, nargs="*", default=None)
    p.add_argument("--batch", type=int, default=8, help="per process")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=int, default=30)
    p.add_argument("--text-lr-scale", type=float, default=1.0,
                   help="text tower LR as a multiple of --lr (1: one LR, the faithful recipe; 0: locked)")
    p.add_argument("--min-lr-ratio", type=float, default=0.01)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=0.5)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--siglip-impl", choices=["shift", "gather"], default="shift")
    p.add_argument("--template", choices=sorted(TEMPLATES), default="present")
    add_evaluation_arguments(p)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--autocast-policy", choices=POLICIES, default="device",
                   help="on a CPU, whose autocast casts a bf16/fp16 cell follows: the CPU's own (which keeps "
                        "norms, softmax and so upstream's residual stream in 16 bits) or CUDA's, emulated "
                        "(bench.cuda_autocast), for a GPU's numerics")
    p.add_argument("--tokenizer", default=None, help="local tokenizer folder (default: the offline BERT vocab)")
    p.add_argument("--text-weights", default=None, help="local text-tower checkpoint folder (bert-base)")
    p.add_argument("--no-resume", action="store_true", help="rerun cells that already have a row")
    p.add_argument("--reports", nargs="*", default=["md", "csv"], help="formats for reports.build (none: skip)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: "list[str] | None" = None) -> int:
    from models import get_size, make_current

    parser = build_parser()
    args = parse_with_config(parser, argv)
    try:
        cells = cells_from_args(args.design, args.variants, args.only, args.exclude, args.precision)
        size = get_size(args.size)
    except ValueError as error:
        parser.error(str(error))
    try:
        size = override_size(size, args.size_set, args.text_max_len)
    except ValueError as error:
        parser.error(str(error))
    seeds = args.seed_list if args.seed_list else list(range(args.seeds))
    device = torch.device(args.device)
    dist = init_from_env(device.type)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    make_current(device)  # --device cuda:N: Triton kernels launch on the current device

    from ablations.data.errors import DataError
    from ablations.data.labels import ABNORMALITIES
    from ablations.data.layout import SPLITS

    try:
        train_set, valid_set = (_cached(open_split(args.data, split, size, args.rescale, args.skip_bad), size,
                                        args.loader_workers) for split in ("train", "valid"))
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    train_idx, calib_idx = split_calibration(train_set, args.calibration_fraction)
    splits = {"train": NextGood(Subset(train_set, train_idx)), "valid": valid_set}
    if calib_idx:
        splits["calibration"] = Subset(train_set, calib_idx)
    data_info = {**describe_data(args.data, SPLITS), "n_train": len(train_idx), "n_calibration": len(calib_idx),
                 "n_eval": len(valid_set), "split": "valid", "classes": list(ABNORMALITIES)}
    out = Path(args.out)
    rows_path = out / "accuracy.jsonl"
    done = {r["cell_key"] for r in read_rows(rows_path) if r.get("status") != "error"} if not args.no_resume else set()
    envs = row_environment(device)
    envs[0]["count"] = dist.world_size if device.type == "cuda" else torch.get_num_threads()
    for cell in cells:
        for seed in seeds:
            policy = autocast_policy(args.autocast_policy, cell.variant.precision, device)
            key = accuracy_cell_key(cell.variant.key, size.name, seed, data_info["name"]) + policy.key_suffix
            if key in done:
                print(f"skip {key}: already in {rows_path}")
                continue
            t0 = time.perf_counter()
            try:
                result = run_cell(cell, seed, key, policy, args, size, splits, dist, device, out, dict(data_info),
                                  envs)
            except Exception as error:  # one broken cell must not lose the sweep...
                traceback.print_exc()
                if dist.enabled:
                    # ...except under DDP: the other ranks are still inside this cell's collectives, and
                    # going on would pair them with the next cell's DDP set-up, a hang until the NCCL
                    # timeout. Stopping lets torchrun stop them; a resubmission redoes this cell.
                    raise
                result = AccuracyResult(cell_key=key, variant_key=cell.variant.key, variant=cell.variant.as_dict(),
                                        size=size.name, size_config=size.as_dict(), batch=args.batch, seed=seed,
                                        status="error", message=f"{type(error).__name__}: {error}",
                                        design=cell.design, baseline=cell.baseline, data=dict(data_info))
            if dist.is_main:
                result.data.pop("classes", None)
                compare_with_baseline(result, read_rows(rows_path), out,
                                      BootstrapSpec(args.bootstrap, args.bootstrap_seed))
                append_row(rows_path, result)
                _write_curve(out, key, result.loss_curve)
                headline = result.protocols.get("ctclip") or next(iter(result.protocols.values()), {}) or {}
                auc = headline.get("macro", {})
                value = auc.get("auroc", {}).get("value") if auc else None
                delta = (result.vs_baseline or {}).get("macro_auroc", {})
                print(f"{key}: {result.status} in {time.perf_counter() - t0:.0f} s"
                      + (f", macro AUROC {value:.3f}" if value is not None else "")
                      + (f" ({delta['delta']:+.3f} vs {result.vs_baseline['baseline_key']}, paired 95 % CI "
                         f"[{delta['ci_low']:+.3f}, {delta['ci_high']:+.3f}], p = {delta['p_value']:.3f})"
                         if delta.get("ci_low") is not None else "")
                      + (f" ({result.reason or result.message})" if result.status != "ok" else ""))
    if dist.is_main:
        rows = read_rows(rows_path)
        print(format_summary(seed_summary(rows)))
        write_reports(rows_path, out, args.reports)
        print(f"rows: {rows_path} (CSV {rows_path.with_suffix('.csv')}); curves: {out / 'curves'}; "
              f"checkpoints: {out / 'checkpoints'}")
    return 0


def override_size(size, assignments: list[str], text_max_len: "int | None" = None):
    """`size` with FIELD=VALUE overrides (typed like the field), named `tiny[text_dropout=0,...]`.

    `--text-max-len` keeps the preset's name, as before: the text length is recorded in the row's
    size_config and does not change the model's weights."""
    if text_max_len:
        size = size.replace(text_max_len=text_max_len)
    if not assignments:
        return size
    fields = size.as_dict()
    changes: dict[str, Any] = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or key not in fields or key in {"name", "notes"}:
            valid = ", ".join(k for k in fields if k not in {"name", "notes"})
            raise ValueError(f"--size-set wants FIELD=VALUE with FIELD one of {valid}; got {item!r}")
        changes[key] = type(fields[key])(text)
    label = ",".join(f"{k}={v}" for k, v in changes.items())
    return size.replace(name=f"{size.name}[{label}]", **changes)


def _write_curve(out: Path, key: str, curve: list[dict]) -> None:
    path = out / "curves" / f"{file_stem(key)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cell_key": key, "loss_curve": curve}))


if __name__ == "__main__":
    sys.exit(main())
