"""Accuracy tables from ablation rows: the paper's five metrics per variant, and AUROC per abnormality.

One table per (device, size, batch, data set) and protocol, since the protocols threshold differently
and `maxf1` is optimistic: mixing them would compare unlike numbers. With one seed a cell shows the
value and its bootstrap CI; with several it shows mean ± std over seeds (the schema leaves that to the
report) and the CI is dropped because intervals of different seeds do not combine.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from typing import Any

from reports import labels, schema
from reports.load import AccRow
from reports.stats import seeds_mean_ci
from reports.table import Column, Context, Table, uniform

METRIC_HEADERS = {
    "auroc": "AUROC",
    "f1": "F1",
    "precision": "precision",
    "recall": "recall",
    "auprc": "AUPRC",
}


def group(rows: Iterable[AccRow]) -> list[tuple[tuple, list[AccRow]]]:
    groups: dict[tuple, list[AccRow]] = {}
    for r in rows:
        groups.setdefault((r.device, r.size, r.batch, str(r.data.get("name", ""))), []).append(r)
    return list(groups.items())


def by_variant(rows: list[AccRow]) -> dict[str, list[AccRow]]:
    """Latest row of each (variant, seed), grouped by variant in first-seen order."""
    latest: dict[str, AccRow] = {}
    for r in rows:
        latest[r.cell_key] = r
    out: dict[str, list[AccRow]] = {}
    for r in latest.values():
        out.setdefault(r.variant_key, []).append(r)
    return out


def protocols(rows: list[AccRow]) -> list[str]:
    found = list(dict.fromkeys(p for r in rows if r.status == "ok" for p in r.protocols))
    return sorted(found, key=lambda p: (schema.PROTOCOLS.index(p) if p in schema.PROTOCOLS else 99, p))


def _metric(block: dict[str, Any] | None, metric: str) -> tuple[float | None, float | None, float | None]:
    """(value, ci_low, ci_high) of a metric entry, which is {"value", "ci_low", "ci_high"} or a bare number."""
    entry = (block or {}).get(metric)
    if isinstance(entry, dict):
        return entry.get("value"), entry.get("ci_low"), entry.get("ci_high")
    return (entry if isinstance(entry, (int, float)) else None), None, None


PAIRED_HEADER = "Δ macro AUROC vs baseline (paired)"


def summarise(values: list[float | None]) -> tuple[float | None, float | None]:
    """(mean, std over seeds) of the defined values; std is None for fewer than two."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def context(rows: list[AccRow]) -> Context:
    r0 = rows[0]
    steps = uniform([r.training.get("steps") for r in rows], "per row")
    return Context(
        device=r0.device.label,
        size=r0.size,
        batch=str(r0.batch),
        precision=uniform([r.training.get("precision") or r.variant.get("precision") for r in rows]),
        steps=f"training steps: {steps}",
    )


def _caption_notes(rows: list[AccRow], protocol: str, average: str) -> list[str]:
    ok = [r for r in rows if r.status == "ok" and protocol in r.protocols]
    block = ok[0].protocols[protocol] if ok else {}
    data = ok[0].data if ok else rows[0].data
    notes = [
        f"Metric protocol: {protocol} ({block.get('description', 'no description in the result')})"
        + (
            "; optimistic: the threshold is chosen to maximise F1 on the evaluated set."
            if block.get("optimistic")
            else "."
        ),
        f"{average.capitalize()} average over abnormalities.",
    ]
    boot = block.get("bootstrap") or {}
    if boot:
        notes.append(
            f"Brackets: {float(boot.get('confidence', 0.95)) * 100:.0f}% bootstrap CI "
            f"({boot.get('n', '?')} resamples by {boot.get('by', '?')})."
        )
    notes.append("With several seeds: mean ± std over seeds.")
    if any(r.vs_baseline for r in ok):
        notes.append(
            f"{PAIRED_HEADER}: this variant's macro AUROC minus the baseline's on the same volumes and seed, with "
            "a paired bootstrap interval (both models scored on each resample; ablations/paired.py), which is "
            "much narrower than the two separate intervals when the models make correlated errors; with "
            "several seeds, mean ± std over seeds and an interval that resamples the seeds too."
        )
    notes.append(
        f"Data: {data.get('name', '?')} ({data.get('source', '?')}), split {data.get('split', '?')}, "
        f"n_train {data.get('n_train', '?')}, n_eval {data.get('n_eval', '?')}."
    )
    return notes


def _paired_columns(ok_runs: dict[str, list[AccRow]]) -> list[Column]:
    """Each variant's paired macro-AUROC difference from the baseline (ablations.paired): with one seed
    the difference and its paired interval; with several the mean ± std of the seeds' differences and,
    when every seed drew the same resamples, an interval over seeds and volumes (stats.seeds_mean_ci)."""
    values, spreads, cis, p_values = [], [], [], []
    for runs in ok_runs.values():
        compared = [r.vs_baseline for r in runs
                    if r.vs_baseline and (r.vs_baseline.get("macro_auroc") or {}).get("delta") is not None]
        blocks = [v["macro_auroc"] for v in compared]
        mean, std = summarise([b["delta"] for b in blocks])
        values.append(mean)
        spreads.append(std)
        one = blocks[0] if len(blocks) == 1 else None
        if one:
            cis.append((one.get("ci_low"), one.get("ci_high")))
        else:
            cis.append(paired_over_seeds(compared))
        p_values.append(one.get("p_value") if one else None)
    return [Column(PAIRED_HEADER, values, fmt="{:+.3f}", ci=cis, spread=spreads),
            Column("paired p-value", p_values, fmt="{:.3f}", show=False)]


def paired_over_seeds(compared: list[dict]) -> tuple[float, float] | None:
    """The interval of the mean paired difference over seeds and volumes, from rows' `vs_baseline`
    blocks; None unless every seed drew the same resamples of the same volumes."""
    same = len({(json.dumps(v.get("bootstrap"), sort_keys=True), v.get("n_eval")) for v in compared}) == 1
    draws = [v.get("macro_auroc_draws") for v in compared]
    if len(compared) < 2 or not same or any(not d for d in draws):
        return None
    return seeds_mean_ci(draws)


def accuracy_table(rows: list[AccRow], protocol: str, group_slug: str, average: str = "macro") -> Table:
    variants = by_variant(rows)
    cols = [
        Column(
            "architecture",
            [
                labels.architecture(rs[0].variant) + labels.evaluated_as(k)
                + (" (baseline)" if any(r.baseline for r in rs) else "")
                for k, rs in variants.items()
            ],
        ),
        Column("loss", [labels.loss(rs[0].variant) for rs in variants.values()]),
    ]
    ok_runs = {
        k: [r for r in rs if r.status == "ok" and protocol in r.protocols] for k, rs in variants.items()
    }
    cols.append(Column("seeds ok", [f"{len(ok_runs[k])}/{len(rs)}" for k, rs in variants.items()]))
    cols.append(
        Column("status", [labels.status("ok" if ok_runs[k] else rs[-1].status) for k, rs in variants.items()])
    )
    for metric in schema.PAPER_METRICS:
        values, spreads, cis = [], [], []
        for k in variants:
            triples = [_metric(r.protocols[protocol].get(average), metric) for r in ok_runs[k]]
            mean, std = summarise([t[0] for t in triples])
            values.append(mean)
            spreads.append(std)
            cis.append((triples[0][1], triples[0][2]) if len(triples) == 1 else None)
        cols.append(Column(METRIC_HEADERS[metric], values, fmt="{:.3f}", best="max", ci=cis, spread=spreads))
    cols += _paired_columns(ok_runs)
    cols.append(
        Column(
            "notes",
            [
                "" if ok_runs[k] else labels.note(rs[-1].status, rs[-1].reason, rs[-1].message)
                for k, rs in variants.items()
            ],
        )
    )
    cols.append(Column("variant key", list(variants), show=False))
    cols.append(
        Column(
            "final loss",
            [summarise([r.training.get("final_loss") for r in ok_runs[k]])[0] for k in variants],
            fmt="{:.4f}",
            show=False,
        )
    )
    r0 = rows[0]
    return Table(
        f"accuracy-{protocol}",
        f"Zero-shot accuracy, protocol {protocol}",
        context(rows),
        cols,
        group_slug,
        _caption_notes(rows, protocol, average),
        {
            "device": r0.device.label,
            "size": r0.size,
            "batch": r0.batch,
            "protocol": protocol,
            "average": average,
            "data": r0.data.get("name"),
        },
    )


def per_class_table(rows: list[AccRow], protocol: str, group_slug: str, metric: str = "auroc") -> Table:
    """Rows are abnormalities; one column per variant (mean over seeds, ± std with several)."""
    variants = by_variant(rows)
    ok_runs = {
        k: [r for r in rs if r.status == "ok" and protocol in r.protocols] for k, rs in variants.items()
    }
    classes = list(dict.fromkeys(c for runs in ok_runs.values() for r in runs for c in r.classes))
    first = next((runs[0] for runs in ok_runs.values() if runs), None)
    per_class0 = first.protocols[protocol].get("per_class", {}) if first else {}
    cols = [
        Column("abnormality", classes),
        Column("support", [per_class0.get(c, {}).get("support") for c in classes], fmt="{:.0f}"),
    ]
    for k, rs in variants.items():
        means, stds = [], []
        for c in classes:
            mean, std = summarise(
                [(r.protocols[protocol].get("per_class", {}).get(c) or {}).get(metric) for r in ok_runs[k]]
            )
            means.append(mean)
            stds.append(std)
        name = f"{labels.architecture(rs[0].variant)}{labels.evaluated_as(k)}, {labels.loss(rs[0].variant)}"
        if not ok_runs[k]:
            name += f" ({labels.status(rs[-1].status)})"
        cols.append(Column(name, means, fmt="{:.3f}", spread=stds, csv_header=f"{metric} [{k}]"))
    notes = [
        (
            f"{METRIC_HEADERS.get(metric, metric)} per abnormality, one column per variant; support is the "
            "number of positive cases in the evaluated split."
        )
    ] + _caption_notes(rows, protocol, "macro")[:1]
    r0 = rows[0]
    return Table(
        f"per-abnormality-{protocol}",
        f"{METRIC_HEADERS.get(metric, metric)} per abnormality, protocol {protocol}",
        context(rows),
        cols,
        group_slug,
        notes,
        {"device": r0.device.label, "size": r0.size, "protocol": protocol, "metric": metric},
    )
