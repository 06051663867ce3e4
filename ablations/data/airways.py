"""The bronchial tree (and the pulmonary arteries that run beside it) of one patient.

A branch is a straight segment; the tree is grown from the carina towards random targets inside each
lobe, halving roughly in calibre every two generations, as real airways do (Weibel: ~0.79 per
generation). It depends only on the anatomy, so findings can thicken or dilate branches by lobe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ablations.data.anatomy import LEFT_LOBES, RIGHT_LOBES, Anatomy
from ablations.data.geometry import Vec3

_SHRINK = 0.8
_MAX_GENERATION = 7
_MIN_RADIUS = 1.0


@dataclass(frozen=True)
class Branch:
    p0: Vec3
    p1: Vec3
    radius: float          # lumen radius, nominal mm
    lobe: str | None       # None for the trachea and main bronchi
    generation: int

    def wall(self, anatomy: Anatomy) -> float:
        """Wall thickness: about a fifth of the lumen radius plus a little, thicker where a finding says so."""
        base = 0.3 * self.radius + 0.6
        if self.lobe is not None and self.lobe in anatomy.wall_lobes:
            base *= anatomy.airway_wall_scale
        return base

    def lumen(self, anatomy: Anatomy) -> float:
        if self.lobe is not None and self.lobe in anatomy.bronchiectasis_lobes and self.generation >= 2:
            return self.radius * anatomy.bronchiectasis_factor
        return self.radius


def _step(anatomy: Anatomy, rng: np.random.Generator, start: np.ndarray, lobe: str, radius: float,
          generation: int, length_hint: float, out: list[Branch]) -> None:
    if generation > _MAX_GENERATION or radius < _MIN_RADIUS:
        return
    for _ in range(2):
        target = anatomy.random_points(rng, lobe, 1)[0]
        direction = target - start
        distance = float(np.linalg.norm(direction)) or 1.0
        length = min(0.55 * distance, length_hint) * rng.uniform(0.8, 1.1)
        end = start + direction / distance * length
        if not anatomy.in_lung(np.float32(end[2]), np.float32(end[1]), np.float32(end[0])):
            end = start + direction / distance * (length * 0.5)
        out.append(Branch(tuple(start), tuple(end), radius, lobe, generation))  # type: ignore[arg-type]
        _step(anatomy, rng, end, lobe, radius * _SHRINK, generation + 1, length * 0.85, out)


def airway_tree(anatomy: Anatomy) -> list[Branch]:
    """Trachea, main bronchi and lobar trees down to ~1 mm calibre."""
    rng = np.random.default_rng(anatomy.tree_seed)
    ca, _ = anatomy.cavity_ab
    ty, r0 = anatomy.trachea_y, anatomy.trachea_radius
    carina = np.array([0.0, ty, anatomy.carina_z])
    branches = [Branch((0.0, ty, anatomy.z_top + 60.0), tuple(carina), r0, None, 0)]  # type: ignore[arg-type]
    # The right main bronchus is shorter, wider and steeper than the left.
    hila = {"right": np.array([-0.33 * ca, ty + 12.0, anatomy.carina_z - 18.0]),
            "left": np.array([0.36 * ca, ty + 16.0, anatomy.carina_z - 30.0])}
    for side, lobes, main_r in (("right", RIGHT_LOBES, 0.8 * r0), ("left", LEFT_LOBES, 0.7 * r0)):
        hilum = hila[side]
        branches.append(Branch(tuple(carina), tuple(hilum), main_r, None, 1))  # type: ignore[arg-type]
        for lobe in lobes:
            _step(anatomy, rng, hilum, lobe, main_r * _SHRINK, 2, 55.0, branches)
    return branches

