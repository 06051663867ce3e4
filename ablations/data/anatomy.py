"""A patient's chest anatomy: random variation of a normal adult chest, and geometric queries on it.

Everything is in the nominal millimetre frame of `geometry.py` (x: right to left, y: anterior to
posterior, z: inferior to superior). Findings that change anatomy (an enlarged heart, pericardial
fluid, a hiatal hernia, thick or dilated bronchi) do so through the fields after `tree_seed`, so the
same patient can be rendered with and without them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ablations.data.geometry import Vec3, clip01

LOBES: tuple[str, ...] = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe",
                          "left lower lobe")
RIGHT_LOBES = LOBES[:3]
LEFT_LOBES = LOBES[3:]
LOWER_LOBES = ("right lower lobe", "left lower lobe")
UPPER_LOBES = ("right upper lobe", "left upper lobe")


@dataclass(frozen=True)
class Anatomy:
    body_a: float           # half-width of the body outline
    body_b: float           # half-depth of the body outline
    body_cy: float          # body centre, anterior-posterior
    fat_mm: float           # subcutaneous fat
    muscle_mm: float        # chest wall muscle inside the fat
    z_top: float            # lung apices
    dome_right: float       # top of the right hemidiaphragm (higher: the liver sits under it)
    dome_left: float
    dome_height: float      # dome top to costophrenic recess is about 1.6x this
    carina_z: float
    mediastinum_hw: float   # half-width of the central strip between the lungs
    heart_center: Vec3
    heart_radii: Vec3
    aorta_radius: float
    trachea_radius: float
    spine_radius: float
    rib_spacing: float
    tree_seed: int
    # Changed by findings.
    heart_scale: float = 1.0
    pericardial_fluid_mm: float = 0.0
    hernia_mm: float = 0.0
    airway_wall_scale: float = 1.0
    wall_lobes: tuple[str, ...] = ()
    bronchiectasis_factor: float = 1.0
    bronchiectasis_lobes: tuple[str, ...] = ()

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Anatomy":
        u = rng.uniform
        body_a, body_b = u(138, 162), u(98, 120)
        dome_right = u(-105, -80)
        carina_z = u(25, 50)
        heart_r = (u(52, 62), u(42, 50), u(44, 54))
        return cls(
            body_a=body_a, body_b=body_b, body_cy=u(-4, 6), fat_mm=u(7, 22), muscle_mm=u(8, 14),
            z_top=carina_z + u(95, 115), dome_right=dome_right, dome_left=dome_right - u(8, 22),
            dome_height=u(35, 50), carina_z=carina_z, mediastinum_hw=u(22, 30),
            heart_center=(u(12, 22), -0.25 * body_b, dome_right + heart_r[2] * u(0.45, 0.6)),
            heart_radii=heart_r, aorta_radius=u(13, 17), trachea_radius=u(8, 10.5), spine_radius=u(16, 20),
            rib_spacing=u(22, 26), tree_seed=int(rng.integers(2**31)),
        )

    def replace(self, **changes: object) -> "Anatomy":
        return dataclasses.replace(self, **changes)

    # Derived geometry -------------------------------------------------------------------------------

    @property
    def cavity_ab(self) -> tuple[float, float]:
        """Half-axes of the thoracic cavity (inside the ribs) at full width."""
        wall = self.fat_mm + self.muscle_mm + 12.0
        return self.body_a - wall, self.body_b - wall

    @property
    def spine_y(self) -> float:
        return self.body_cy + self.cavity_ab[1] - 6.0

    @property
    def trachea_y(self) -> float:
        return self.spine_y - self.spine_radius - 32.0

    @property
    def heart_outer_radii(self) -> Vec3:
        """Heart plus epicardial fat (or fluid) plus pericardium."""
        shell = 6.0 + self.pericardial_fluid_mm
        return tuple(r * self.heart_scale + shell for r in self.heart_radii)  # type: ignore[return-value]

    @property
    def heart_c(self) -> Vec3:
        # An enlarged heart grows leftward and upward but keeps sitting on the diaphragm.
        cx, cy, cz = self.heart_center
        grow = self.heart_scale - 1.0
        return (cx + grow * self.heart_radii[0] * 0.6, cy, cz + grow * self.heart_radii[2] * 0.6)

    def cavity_scale(self, z: np.ndarray) -> np.ndarray:
        """How much of the full cavity width remains at height z (1 below the apex taper, 0 above the apex)."""
        start = self.z_top - 55.0
        t = clip01((z - start) / 55.0)
        return np.sqrt(clip01(1.0 - t * t))

    def in_cavity(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        ca, cb = self.cavity_ab
        s = self.cavity_scale(z)
        return (x / (ca * s + 1e-3)) ** 2 + ((y - self.body_cy) / (cb * s + 1e-3)) ** 2 <= 1.0

    def diaphragm_z(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        ca, cb = self.cavity_ab
        dome = np.where(x < 0, self.dome_right, self.dome_left)
        xc = np.where(x < 0, -0.45 * ca, 0.45 * ca)
        r2 = ((x - xc) / (0.7 * ca)) ** 2 + ((y - self.body_cy - 10.0) / (0.95 * cb)) ** 2
        return dome - self.dome_height * np.minimum(r2, 1.6)

    def in_lung(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The lungs: cavity, minus mediastinum, spine and heart, above the diaphragm, below the apex."""
        hx, hy, hz = self.heart_c
        rx, ry, rz = self.heart_outer_radii
        sr = self.spine_radius + 10.0
        return (self.in_cavity(z, y, x) & (np.abs(x) > self.mediastinum_hw) & (z < self.z_top)
                & (z > self.diaphragm_z(y, x))
                & ((x / sr) ** 2 + ((y - self.spine_y) / sr) ** 2 > 1.0)
                & (((x - hx) / (rx + 2)) ** 2 + ((y - hy) / (ry + 2)) ** 2 + ((z - hz) / (rz + 2)) ** 2 > 1.0))

    def lobe_of(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Index into LOBES for each point (meaningful inside the lungs only)."""
        z, y, x = np.broadcast_arrays(z, y, x)
        _, cb = self.cavity_ab
        dome = np.where(x < 0, self.dome_right, self.dome_left)
        zfrac = (z - dome) / (self.z_top - dome)
        # The oblique fissure runs from high posteriorly to low anteriorly.
        yfrac = clip01((y - self.body_cy + cb) / (2 * cb))
        above_oblique = zfrac > 0.05 + 0.6 * yfrac
        right = np.where(above_oblique, np.where(zfrac > 0.5, 0, 1), 2)
        left = np.where(above_oblique, 3, 4)
        return np.where(x < 0, right, left)

    def random_points(self, rng: np.random.Generator, lobe: str, n: int = 1, margin: float = 0.0) -> np.ndarray:
        """n points (x, y, z) inside `lobe`, at least `margin` mm from its lung's edge along each axis."""
        ca, cb = self.cavity_ab
        dome = min(self.dome_right, self.dome_left) - 1.6 * self.dome_height
        lobe_index = LOBES.index(lobe)
        sign = -1.0 if lobe in RIGHT_LOBES else 1.0
        found: list[np.ndarray] = []
        for _ in range(200):
            cand = np.stack([sign * rng.uniform(self.mediastinum_hw, ca, 512), rng.uniform(-cb, cb, 512)
                             + self.body_cy, rng.uniform(dome, self.z_top, 512)], axis=1)
            # Test the cheap conditions on all candidates, the rest only on the survivors (most of a
            # lobe's bounding box is outside it); the points kept, and their order, are the same.
            x, y, z = cand[:, 0], cand[:, 1], cand[:, 2]
            cand = cand[self.in_lung(z, y, x)]
            x, y, z = cand[:, 0], cand[:, 1], cand[:, 2]
            cand = cand[self.lobe_of(z, y, x) == lobe_index]
            if margin > 0:
                for dx, dy, dz in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
                    x, y, z = cand[:, 0], cand[:, 1], cand[:, 2]
                    cand = cand[self.in_lung(z + dz * margin, y + dy * margin, x + dx * margin)]
            found.extend(cand)
            if len(found) >= n:
                return np.array(found[:n])
        if margin > 0:
            return self.random_points(rng, lobe, n, margin / 2)
        raise RuntimeError(f"could not place a point in the {lobe}")
