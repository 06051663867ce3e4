"""One synthetic scan: normal anatomy, findings on top, scanner blur and noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ablations.data.airways import Branch, airway_tree
from ablations.data.anatomy import Anatomy
from ablations.data.chest import render_chest
from ablations.data.findings import Finding, apply_to_anatomy
from ablations.data.geometry import Grid, smooth_inplane
from ablations.data.lesions import paint_findings


@dataclass
class Phantom:
    hu: np.ndarray       # (D, H, W) float32 Hounsfield units
    tissue: np.ndarray   # (D, H, W) uint8 tissues.Tissue, before blur and noise


def render_scan(anatomy: Anatomy, findings: list[Finding], grid: Grid, noise_hu: float = 0.0,
                noise_seed: int = 0, blur: bool = True, tree: list[Branch] | None = None) -> Phantom:
    """Render `anatomy` with `findings` on `grid`. Deterministic in all arguments.

    `tree`, if given, must be `airway_tree(anatomy)`: growing it is about a third of a tiny volume's
    cost, and a patient's scans and reconstructions share it, so a caller rendering several grows it
    once."""
    # The airway tree comes from the patient before findings, so an enlarged heart or an effusion
    # never reroutes bronchi: a finding changes only what it should.
    tree = airway_tree(anatomy) if tree is None else tree
    changed = apply_to_anatomy(anatomy, findings)
    canvas = render_chest(changed, grid, tree)
    paint_findings(canvas, changed, findings)
    hu = smooth_inplane(canvas.hu) if blur else canvas.hu
    if noise_hu > 0:
        rng = np.random.default_rng(noise_seed)
        hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
    return Phantom(hu, canvas.tissue)
