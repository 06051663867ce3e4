"""Read result files (JSON Lines, efficiency and accuracy rows mixed) into typed rows.

Strict on purpose: a report built from a half-understood file would print wrong numbers with a straight
face. Any line that is not a JSON object of a known kind and schema version, or lacks a field the
tables need, raises `ResultFileError` naming the file and the line. Unknown extra fields are ignored,
as both schemas ask readers to do.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reports import schema


class ResultFileError(ValueError):
    """A result file that cannot be read; the message starts with "<file>:<line>:"."""

    def __init__(self, path: Path, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.problem = path, line, problem


@dataclass(frozen=True)
class Device:
    type: str
    name: str
    count: int | None = None
    threads: int | None = None

    @property
    def label(self) -> str:
        """'NVIDIA H100 80GB HBM3' (or '2× ...'), or 'CPU, 2 cores (AMD EPYC ...)': what captions state."""
        if self.type == "cpu":
            cores = f"{self.count} core{'s' if self.count != 1 else ''}" if self.count else "cores unknown"
            threads = (
                f", {self.threads} torch thread{'s' if self.threads != 1 else ''}" if self.threads else ""
            )
            return f"CPU, {cores}{threads} ({self.name or 'unknown model'})"
        many = f"{self.count}× " if self.count and self.count > 1 else ""
        return f"{many}{self.name or self.type}"


@dataclass(frozen=True)
class Stage:
    """One stage's timing summary, in seconds."""

    median: float
    iqr: float
    p10: float
    p90: float
    n: int
    samples: tuple[float, ...] = ()  # every timed sample when the file kept them (for intervals)


@dataclass
class EffRow:
    """An efficiency row (kind measured or estimate); units as in the file: bytes and seconds."""

    source: str
    cell_key: str
    kind: str
    status: str
    variant_key: str
    variant: dict[str, Any]
    size: str
    batch: int
    device: Device
    precision: str
    design: str | None = None
    baseline: bool = False
    reason: str | None = None
    message: str | None = None
    timer: str | None = None
    stages: dict[str, Stage] = field(default_factory=dict)
    memory: dict[str, int | None] = field(default_factory=dict)
    flops: dict[str, float] | None = None
    tflops_per_s: float | None = None
    mfu: float | None = None
    hfu: float | None = None
    peak: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    roofline: dict[str, Any] | None = None
    timestamp: str = ""
    round: int = 0  # which pass over the design (bench.run --rounds)
    # Every round of this cell when reports.rounds merged several into this row (it is one of them, the
    # median one); empty for a single round.
    rounds: list["EffRow"] = field(default_factory=list)


@dataclass
class AccRow:
    """An accuracy row (docs/accuracy-schema.md); metrics are fractions in [0, 1]."""

    source: str
    cell_key: str
    status: str
    variant_key: str
    variant: dict[str, Any]
    size: str
    batch: int
    seed: int
    device: Device
    design: str | None = None
    baseline: bool = False
    reason: str | None = None
    message: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    loss_curve: list[dict[str, float]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    protocols: dict[str, dict[str, Any]] = field(default_factory=dict)
    roc: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    vs_baseline: dict[str, Any] | None = None  # paired AUROC difference from the baseline (ablations.paired)
    timestamp: str = ""


@dataclass
class Results:
    efficiency: list[EffRow] = field(default_factory=list)
    accuracy: list[AccRow] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _need(row: dict[str, Any], name: str, types: type | tuple[type, ...], optional: bool = False) -> Any:
    value = row.get(name)
    if value is None and optional:
        return None
    # bool is an int subclass; a count given as true/false is a writer bug worth catching.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise ValueError(f"field {name!r} must be {_type_names(types)}, got {value!r}")
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in _as_tuple(types))


def _device(row: dict[str, Any]) -> Device:
    d = _need(row, "device", dict)
    kind = d.get("type")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"field 'device' must have a 'type' (cpu or cuda), got {d!r}")
    count = d.get("count")
    threads = d.get("torch_threads")
    return Device(
        type=kind,
        name=str(d.get("name") or ""),
        count=count if isinstance(count, int) else None,
        threads=threads if isinstance(threads, int) else None,
    )


def _number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"field {name!r} must be a number or null, got {value!r}")
    return float(value)


def _stages(row: dict[str, Any]) -> dict[str, Stage]:
    out = {}
    for name, stats in (_need(row, "stages", dict, optional=True) or {}).items():
        if not isinstance(stats, dict) or any(k not in stats for k in schema.STAGE_STATS):
            raise ValueError(f"stage {name!r} must have {', '.join(schema.STAGE_STATS)}, got {stats!r}")
        values = {k: _number(stats[k], f"stages.{name}.{k}") for k in schema.STAGE_STATS}
        out[name] = Stage(
            median=values["median"],
            iqr=values["iqr"],
            p10=values["p10"],
            p90=values["p90"],
            n=int(values["n"]),
            samples=_samples(stats.get("samples"), f"stages.{name}.samples"),
        )
    return out


def _samples(value: Any, name: str) -> tuple[float, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise TypeError(f"field {name!r} must be a list of numbers, got {type(value).__name__}")
    numbers = (_number(v, name) for v in value)
    return tuple(v for v in numbers if v is not None)


def _memory(row: dict[str, Any]) -> dict[str, int | None]:
    memory = _need(row, "memory", dict, optional=True) or {}
    return {k: _number(memory.get(k), f"memory.{k}") for k in schema.MEMORY_FIELDS}


def _common(row: dict[str, Any], statuses: tuple[str, ...]) -> dict[str, Any]:
    status = _need(row, "status", str)
    if status not in statuses:
        raise ValueError(f"status {status!r} is not one of {', '.join(statuses)}")
    return {
        "cell_key": _need(row, "cell_key", str),
        "status": status,
        "variant_key": _need(row, "variant_key", str),
        "variant": _need(row, "variant", dict),
        "size": _need(row, "size", str),
        "batch": _need(row, "batch", int),
        "device": _device(row),
        "design": _need(row, "design", str, optional=True),
        "baseline": bool(row.get("baseline", False)),
        "reason": _need(row, "reason", str, optional=True),
        "message": _need(row, "message", str, optional=True),
        "timestamp": str(row.get("timestamp") or ""),
    }


def parse_efficiency(row: dict[str, Any], source: str) -> EffRow:
    common = _common(row, schema.EFFICIENCY_STATUSES)
    flops = _need(row, "flops", dict, optional=True)
    return EffRow(
        source=source,
        kind=row["kind"],
        **common,
        precision=str(row.get("precision") or common["variant"].get("precision") or "fp32"),
        timer=_need(row, "timer", str, optional=True),
        stages=_stages(row),
        memory=_memory(row),
        flops={k: _number(v, f"flops.{k}") for k, v in flops.items()} if flops else None,
        tflops_per_s=_number(row.get("tflops_per_s"), "tflops_per_s"),
        mfu=_number(row.get("mfu"), "mfu"),
        hfu=_number(row.get("hfu"), "hfu"),
        peak=_need(row, "peak", dict, optional=True),
        settings=_need(row, "settings", dict, optional=True) or {},
        flags=[str(f) for f in (_need(row, "flags", list, optional=True) or [])],
        roofline=_need(row, "roofline", dict, optional=True),
        round=_need(row, "round", int, optional=True) or 0,
    )


def parse_accuracy(row: dict[str, Any], source: str) -> AccRow:
    common = _common(row, schema.ACCURACY_STATUSES)
    protocols = _need(row, "protocols", dict, optional=True) or {}
    for name, block in protocols.items():
        if not isinstance(block, dict) or not isinstance(block.get("macro", {}), dict):
            raise TypeError(f"protocol {name!r} must be an object with 'macro', 'weighted', 'per_class'")
    return AccRow(
        source=source,
        **common,
        seed=_need(row, "seed", int),
        data=_need(row, "data", dict, optional=True) or {},
        training=_need(row, "training", dict, optional=True) or {},
        loss_curve=_need(row, "loss_curve", list, optional=True) or [],
        classes=[str(c) for c in (_need(row, "classes", list, optional=True) or [])],
        protocols=protocols,
        roc=_need(row, "roc", dict, optional=True) or {},
        vs_baseline=_need(row, "vs_baseline", dict, optional=True),
    )


def parse_line(line: str) -> EffRow | AccRow | None:
    """One line of a result file; None for a blank line. Raises ValueError saying what is wrong."""
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"not valid JSON ({exc.msg} at column {exc.colno}); a result file is JSON Lines, "
            "one object per line"
        ) from None
    if not isinstance(row, dict):
        raise TypeError(f"a result row must be a JSON object, got {type(row).__name__}")
    version = row.get("schema_version")
    if version != schema.SCHEMA_VERSION:
        raise ValueError(f"schema_version {version!r}; this reader knows version {schema.SCHEMA_VERSION}")
    kind = row.get("kind")
    if kind not in schema.KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(schema.KINDS)}")
    return parse_accuracy(row, "") if kind == schema.ACCURACY_KIND else parse_efficiency(row, "")


def result_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, plus every *.jsonl under each folder named (recursively, sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*.jsonl") if f.is_file())
            if not found:
                raise ResultFileError(p, None, "folder holds no *.jsonl result files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ResultFileError(p, None, "no such file or folder")
    return files


def load(paths: Iterable[str | Path]) -> Results:
    """Every row of every result file under `paths`, in file then line order."""
    results = Results(files=result_files(paths))
    for path in results.files:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, start=1):
                try:
                    row = parse_line(line)
                except (ValueError, TypeError) as exc:
                    raise ResultFileError(path, number, str(exc)) from None
                if row is None:
                    continue
                row.source = f"{path}:{number}"
                (results.accuracy if isinstance(row, AccRow) else results.efficiency).append(row)
    if not results.efficiency and not results.accuracy:
        raise ResultFileError(results.files[0] if results.files else Path("."), None, "no result rows")
    return results


def latest(rows: Iterable[EffRow], key=lambda r: (r.cell_key, r.device.label)) -> list[EffRow]:
    """One row per key, the last one read (a resumed or rerun cell supersedes), in first-seen order."""
    chosen: dict[Any, EffRow] = {}
    for row in rows:
        chosen[key(row)] = row  # a dict keeps the first insertion's position, so order stays first-seen
    return list(chosen.values())
