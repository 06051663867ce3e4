"""Accuracy plots, one PNG per group (device, size, batch, data set), 300 dpi.

- roc-<group>.png    ROC curve per abnormality, one line per variant (its first successful seed, since
                     curves of different seeds do not average point by point), AUROC in the legend
- loss-<group>.png   training loss against step for every run, one colour per variant
"""

from __future__ import annotations

import math
from pathlib import Path

from reports import labels
from reports.load import AccRow
from reports.plots import plt, save, title
from reports.table import Context


def _name(row: AccRow) -> str:
    return f"{labels.architecture(row.variant)}, {labels.loss(row.variant)}"


def _firsts(rows: list[AccRow]) -> list[AccRow]:
    """The first successful run of each variant, in first-seen order."""
    seen: dict[str, AccRow] = {}
    for r in rows:
        if r.status == "ok" and r.roc and r.variant_key not in seen:
            seen[r.variant_key] = r
    return list(seen.values())


def roc_plot(rows: list[AccRow], ctx: Context, path: Path, protocol: str | None = None) -> Path | None:
    runs = _firsts(rows)
    classes = list(dict.fromkeys(c for r in runs for c in (r.classes or list(r.roc)) if c in r.roc))
    if not classes:
        return None
    ncols = min(4, len(classes))
    nrows = math.ceil(len(classes) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(2.2 * ncols, 2.2 * nrows + 1.2),
        squeeze=False,
        sharex=True,
        sharey=True,
        layout="constrained",
    )
    colours = {r.variant_key: plt.cm.tab10(i % 10) for i, r in enumerate(runs)}
    for ax, cls in zip(axes.flat, classes):
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5, linestyle=":")
        for r in runs:
            curve = r.roc.get(cls)
            if not curve:
                continue
            auc = None
            if protocol and protocol in r.protocols:
                auc = (r.protocols[protocol].get("per_class", {}).get(cls) or {}).get("auroc")
            ax.plot(
                curve["fpr"],
                curve["tpr"],
                linewidth=0.9,
                color=colours[r.variant_key],
                label=f"AUROC {auc:.3f}" if isinstance(auc, (int, float)) else None,
            )
        ax.set_title(cls, fontsize=6)
        ax.tick_params(labelsize=5)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=4, loc="lower right")
    for ax in list(axes.flat)[len(classes) :]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colours[r.variant_key]) for r in runs]
    fig.legend(
        handles, [_name(r) for r in runs], fontsize=6, loc="outside lower center", ncol=min(2, len(runs))
    )
    for ax in axes[-1]:
        ax.set_xlabel("false positive rate", fontsize=6)
    fig.supylabel("true positive rate", fontsize=7)
    title(fig, "ROC curves per abnormality (first successful seed of each variant)", ctx)
    return save(fig, path)


def loss_plot(rows: list[AccRow], ctx: Context, path: Path) -> Path | None:
    runs = [r for r in rows if r.loss_curve]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    keys = list(dict.fromkeys(r.variant_key for r in runs))
    for r in runs:
        steps = [p["step"] for p in r.loss_curve]
        losses = [p["loss"] for p in r.loss_curve]
        first = r is next(x for x in runs if x.variant_key == r.variant_key)
        ax.plot(
            steps,
            losses,
            linewidth=0.9,
            color=plt.cm.tab10(keys.index(r.variant_key) % 10),
            label=_name(r) + (f" ({labels.status(r.status)})" if r.status != "ok" else "") if first else None,
            alpha=0.9 if r.status == "ok" else 0.5,
        )
    ax.set_xlabel("training step", fontsize=7)
    ax.set_ylabel("training loss (each variant's own loss function)", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    title(fig, "Training loss (one line per seed)", ctx)
    return save(fig, path)
