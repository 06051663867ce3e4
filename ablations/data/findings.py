"""What each positive label looks like in one scan: subtype, sites and sizes, shared by image and report.

A `Finding` is sampled once per positive label; the renderer paints it and the report describes the
same record, so the text quotes the sizes and locations that are actually in the volume. Sizes are in
nominal millimetres (see `geometry.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ablations.data.anatomy import LOBES, LOWER_LOBES, UPPER_LOBES, Anatomy
from ablations.data.labels import ABNORMALITIES

STATIONS: tuple[str, ...] = ("right paratracheal", "subcarinal", "prevascular", "right hilar", "left hilar",
                             "aortopulmonary window")


@dataclass(frozen=True)
class Finding:
    name: str                  # one of labels.ABNORMALITIES
    kind: str = ""             # subtype the report names (e.g. "pacemaker", "centrilobular")
    sites: tuple[str, ...] = ()  # lobes, lymph-node stations, coronary vessels, or "right"/"left" pleura
    sizes: tuple[float, ...] = ()  # one per site where meaningful, nominal mm (or heart scale for cardiomegaly)
    seed: int = 0              # the renderer's own randomness, so other findings never shift this one

    def __post_init__(self) -> None:
        if self.name not in ABNORMALITIES:
            raise ValueError(f"unknown abnormality {self.name!r}; valid names: {', '.join(ABNORMALITIES)}")


def _lobes(rng: np.random.Generator, pool: tuple[str, ...], lo: int, hi: int) -> tuple[str, ...]:
    n = int(rng.integers(lo, min(hi, len(pool)) + 1))
    return tuple(sorted(rng.choice(pool, n, replace=False).tolist(), key=LOBES.index))


def _sample_one(name: str, rng: np.random.Generator) -> Finding:
    seed = int(rng.integers(2**31))
    u = rng.uniform
    pick = lambda options: str(rng.choice(options))  # noqa: E731
    if name == "Medical material":
        return Finding(name, pick(["pacemaker", "sternotomy wires", "port catheter", "surgical clips"]), seed=seed)
    if name == "Arterial wall calcification":
        return Finding(name, pick(["mild", "moderate", "extensive"]), seed=seed)
    if name == "Cardiomegaly":
        return Finding(name, sizes=(round(u(1.25, 1.45), 2),), seed=seed)
    if name == "Pericardial effusion":
        return Finding(name, sizes=(round(u(7, 18)),), seed=seed)
    if name == "Coronary artery wall calcification":
        vessels = ("LAD", "LCx", "RCA")
        chosen = set(rng.choice(vessels, int(rng.integers(1, 4)), replace=False).tolist())
        return Finding(name, sites=tuple(v for v in vessels if v in chosen), seed=seed)
    if name == "Hiatal hernia":
        return Finding(name, "sliding", sizes=(round(u(30, 55)),), seed=seed)
    if name == "Lymphadenopathy":
        chosen = set(rng.choice(STATIONS, int(rng.integers(1, 4)), replace=False).tolist())
        sites = tuple(s for s in STATIONS if s in chosen)
        return Finding(name, sites=sites, sizes=tuple(round(u(11, 22)) for _ in sites), seed=seed)
    if name == "Emphysema":
        kind = pick(["centrilobular", "centrilobular", "paraseptal", "bullous"])
        return Finding(name, kind, _lobes(rng, UPPER_LOBES if kind != "bullous" else LOBES, 1, 2), seed=seed)
    if name == "Atelectasis":
        return Finding(name, pick(["subsegmental", "passive"]), _lobes(rng, LOWER_LOBES + ("right middle lobe",), 1, 2),
                       seed=seed)
    if name == "Lung nodule":
        n = int(rng.choice([1, 1, 1, 2, 3]))
        sites = tuple(rng.choice(LOBES, n).tolist())
        return Finding(name, pick(["solid", "solid", "calcified"]), sites,
                       tuple(round(u(4, 20)) for _ in sites), seed=seed)
    if name == "Lung opacity":
        return Finding(name, "ground-glass", _lobes(rng, LOBES, 1, 3), seed=seed)
    if name == "Pulmonary fibrotic sequela":
        return Finding(name, pick(["bands", "reticular"]), _lobes(rng, LOBES, 1, 2), seed=seed)
    if name == "Pleural effusion":
        sides = (("right",), ("left",), ("right", "left"))[int(rng.integers(3))]
        return Finding(name, sites=sides, sizes=tuple(round(u(15, 45)) for _ in sides), seed=seed)
    if name == "Mosaic attenuation pattern":
        return Finding(name, sites=LOBES, seed=seed)
    if name == "Peribronchial thickening":
        return Finding(name, sites=_lobes(rng, LOBES, 2, 5), seed=seed)
    if name == "Consolidation":
        sites = _lobes(rng, LOBES, 1, 2)
        return Finding(name, sites=sites, sizes=tuple(round(u(35, 70)) for _ in sites), seed=seed)
    if name == "Bronchiectasis":
        return Finding(name, pick(["cylindrical", "varicose"]), _lobes(rng, LOWER_LOBES + ("right middle lobe",), 1, 2),
                       seed=seed)
    if name == "Interlobular septal thickening":
        return Finding(name, "smooth", _lobes(rng, LOBES, 2, 5), seed=seed)
    raise AssertionError(name)


def sample_findings(labels: np.ndarray, rng: np.random.Generator) -> list[Finding]:
    """One Finding per positive label, in CT-RATE label order."""
    return [_sample_one(name, rng) for name, on in zip(ABNORMALITIES, labels) if on]


def apply_to_anatomy(anatomy: Anatomy, findings: list[Finding]) -> Anatomy:
    """Fold the findings that change anatomy itself (not painted on top of it) into the anatomy."""
    changes: dict[str, object] = {}
    for f in findings:
        if f.name == "Cardiomegaly":
            changes["heart_scale"] = f.sizes[0]
        elif f.name == "Pericardial effusion":
            changes["pericardial_fluid_mm"] = f.sizes[0]
        elif f.name == "Hiatal hernia":
            changes["hernia_mm"] = f.sizes[0]
        elif f.name == "Peribronchial thickening":
            changes.update(airway_wall_scale=2.8, wall_lobes=f.sites)
        elif f.name == "Bronchiectasis":
            changes.update(bronchiectasis_factor=2.3 if f.kind == "cylindrical" else 2.8, bronchiectasis_lobes=f.sites)
    return anatomy.replace(**changes)
