"""Mean ± std over seeds of each variant's macro metrics, per protocol (printed at the end of a sweep;
reports compute the same from the rows, which store one seed each)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

import numpy as np

from reports.accuracy import paired_over_seeds


def seed_summary(rows: Iterable[dict[str, Any]], metric: str = "auroc") -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for row in rows:
        if row.get("status") == "ok":
            groups[(row["variant_key"], row["size"], row["data"].get("name", ""))].append(row)
    out = []
    for (variant_key, size, data), members in groups.items():
        entry: dict[str, Any] = {"variant_key": variant_key, "size": size, "data": data, "n_seeds": len(members)}
        for protocol in members[0]["protocols"]:
            values = [r["protocols"][protocol]["macro"][metric]["value"] for r in members]
            values = np.array([v for v in values if v is not None], dtype=float)
            entry[protocol] = (float(values.mean()) if values.size else None,
                               float(values.std(ddof=1)) if values.size > 1 else None)
            lows = [r["protocols"][protocol]["macro"][metric]["ci_low"] for r in members]
            highs = [r["protocols"][protocol]["macro"][metric]["ci_high"] for r in members]
            if all(v is not None for v in lows + highs):
                entry[protocol + "_ci"] = (float(np.mean(lows)), float(np.mean(highs)))
        paired = [r["vs_baseline"]["macro_auroc"] for r in members
                  if (r.get("vs_baseline") or {}).get("macro_auroc", {}).get("ci_low") is not None]
        if metric == "auroc" and paired:
            entry["paired"] = [(p["delta"], p["ci_low"], p["ci_high"]) for p in paired]
            entry["paired_baseline"] = members[0]["vs_baseline"]["baseline_key"]
            entry["paired_over_seeds"] = paired_over_seeds([r["vs_baseline"] for r in members
                                                            if r.get("vs_baseline")])
        out.append(entry)
    return out


def format_summary(entries: list[dict[str, Any]], metric: str = "auroc") -> str:
    lines = [f"macro {metric.upper()}: mean ± std over seeds [mean bootstrap 95% CI]"]
    for e in entries:
        parts = []
        for protocol in ("ctclip", "clean", "maxf1"):
            if protocol in e and e[protocol][0] is not None:
                mean, std = e[protocol]
                text = f"{protocol} {mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")
                if protocol + "_ci" in e:
                    text += f" [{e[protocol + '_ci'][0]:.3f}, {e[protocol + '_ci'][1]:.3f}]"
                parts.append(text)
        lines.append(f"  {e['variant_key']} ({e['size']}, {e['n_seeds']} seeds): " + "; ".join(parts))
        if "paired" in e:
            # '*' marks a seed whose paired interval excludes 0: resolved for that training run only.
            seeds = ", ".join(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" + ("*" if lo > 0 or hi < 0 else "")
                              for d, lo, hi in e["paired"])
            deltas = [d for d, _, _ in e["paired"]]
            spread = f" ± {np.std(deltas, ddof=1):.3f}" if len(deltas) > 1 else ""
            both = e.get("paired_over_seeds")
            interval = f" [{both[0]:+.3f}, {both[1]:+.3f}] over seeds and volumes" if both else " over seeds"
            lines.append(f"    paired vs {e['paired_baseline']}: {np.mean(deltas):+.3f}{spread}{interval}; "
                         f"per seed {seeds}")
    return "\n".join(lines)
