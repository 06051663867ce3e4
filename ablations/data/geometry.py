"""Voxel grid in a nominal millimetre frame, and a canvas that paints shapes into it cheaply.

The phantom is described in *nominal* millimetres of a real adult chest: x runs from the patient's
right to left (image columns), y from anterior to posterior (image rows), z from inferior to superior
(slices), origin at the centre of the field of view. A grid maps its voxels onto that frame with a
`scale` (nominal mm per physical mm) so that small model sizes get a whole miniature chest rather than
a 30 mm crop of one. Every painter touches only the bounding box of its shape, in slabs of slices, so
a paper-size volume (~80 M voxels) never needs a full-volume temporary per shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Callable, Iterable, Sequence

import numpy as np

Vec3 = tuple[float, float, float]  # (x, y, z) in nominal mm
MaskFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (z, y, x) -> bool
ValueFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

_SLAB_VOXELS = 4_000_000


@dataclass(frozen=True)
class Grid:
    """A (D, H, W) voxel grid with physical spacing (dz, dy, dx) in mm."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    scale: float = 1.0

    def step(self, axis: int) -> float:
        """Nominal mm between voxel centres along axis 0 (z), 1 (y) or 2 (x)."""
        return self.spacing[axis] * self.scale

    def coord(self, axis: int, index: np.ndarray | slice) -> np.ndarray:
        """Nominal mm of voxel centres; a slice returns a read-only view of the axis's coordinates."""
        if isinstance(index, slice):
            return self._axis_coords[axis][index]
        return self._centres(axis, index)

    def _centres(self, axis: int, index: np.ndarray) -> np.ndarray:
        return ((index + 0.5 - self.shape[axis] / 2.0) * self.step(axis)).astype(np.float32)

    @cached_property
    def _axis_coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # A phantom paints thousands of small shapes, each asking for its box's coordinates: computing
        # each axis once and slicing it gives the same values without an arange and a cast per call.
        axes = tuple(self._centres(axis, np.arange(n)) for axis, n in enumerate(self.shape))
        for coords in axes:
            coords.setflags(write=False)
        return axes  # type: ignore[return-value]

    def index_range(self, axis: int, lo: float, hi: float) -> slice:
        """Voxels whose centres may fall in [lo, hi] nominal mm (clipped to the grid)."""
        start, stop = self.index_ranges(axis, np.asarray(lo), np.asarray(hi))
        return slice(int(start), int(stop))

    def index_ranges(self, axis: int, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """index_range for arrays of bounds: start and stop per bound, in the bounds' own float precision
        (float32 bounds round as float32 does), so that stop <= start is an empty range."""
        n, step = self.shape[axis], self.step(axis)
        start = np.floor(lo / step + n / 2.0 - 0.5).astype(np.int64)
        stop = np.ceil(hi / step + n / 2.0 - 0.5).astype(np.int64) + 1
        return np.maximum(start, 0), np.minimum(np.maximum(stop, 0), n)

    def box(self, lo: Vec3, hi: Vec3) -> tuple[slice, slice, slice]:
        return (self.index_range(0, lo[2], hi[2]), self.index_range(1, lo[1], hi[1]),
                self.index_range(2, lo[0], hi[0]))

    @property
    def full(self) -> tuple[slice, slice, slice]:
        return (slice(0, self.shape[0]), slice(0, self.shape[1]), slice(0, self.shape[2]))

    @property
    def extent(self) -> Vec3:
        """Half-extent of the field of view in nominal mm, (x, y, z)."""
        return (self.shape[2] * self.step(2) / 2, self.shape[1] * self.step(1) / 2, self.shape[0] * self.step(0) / 2)


def clip01(values: np.ndarray) -> np.ndarray:
    """np.clip(values, 0, 1) for values without NaN, minus np.clip's Python-level dispatch (~3x the
    cost of the two ufuncs on the small arrays the renderer passes thousands of times a volume)."""
    return np.minimum(np.maximum(values, 0.0), 1.0)


@lru_cache(maxsize=64)
def _allowed_table(where: tuple[int, ...]) -> np.ndarray:
    """Tissue labels are uint8, so a 256-entry table answers "is this label allowed" in one gather
    (np.isin sorts and searches on every call: most of a small capsule's cost). Painters pass a few
    fixed tuples, so each table is built once."""
    allowed = np.zeros(256, dtype=bool)
    allowed[list(where)] = True
    allowed.setflags(write=False)
    return allowed


class Canvas:
    """A HU volume plus a tissue-label volume, painted front to back by the renderer."""

    def __init__(self, grid: Grid, fill_hu: float, fill_tissue: int) -> None:
        self.grid = grid
        self.hu = np.full(grid.shape, fill_hu, dtype=np.float32)
        self.tissue = np.full(grid.shape, fill_tissue, dtype=np.uint8)

    def paint(self, box: tuple[slice, slice, slice], mask_fn: MaskFn, value: "float | ValueFn",
              tissue: int | None, where: Iterable[int] | None = None) -> int:
        """Set voxels in `box` where mask_fn holds (and the current tissue is in `where`); returns count."""
        zs, ys, xs = box
        if zs.start >= zs.stop or ys.start >= ys.stop or xs.start >= xs.stop:
            return 0
        allowed = None if where is None else _allowed_table(tuple(where))
        y, x = self.grid.coord(1, ys)[:, None], self.grid.coord(2, xs)[None, :]
        slab = max(1, _SLAB_VOXELS // ((ys.stop - ys.start) * (xs.stop - xs.start)))
        painted = 0
        for z0 in range(zs.start, zs.stop, slab):
            sl = slice(z0, min(z0 + slab, zs.stop))
            z = self.grid.coord(0, sl)[:, None, None]
            mask = np.broadcast_to(mask_fn(z, y[None], x[None]), (sl.stop - sl.start, y.shape[0], x.shape[1]))
            sub = (sl, ys, xs)
            if allowed is not None:
                mask = mask & allowed[self.tissue[sub]]
            if not mask.any():
                continue
            if callable(value):
                vals = np.broadcast_to(value(z, y[None], x[None]), mask.shape)
                self.hu[sub][mask] = vals[mask]
            else:
                self.hu[sub][mask] = value
            if tissue is not None:
                self.tissue[sub][mask] = tissue
            painted += int(mask.sum())
        return painted

    # Shapes ---------------------------------------------------------------------------------------

    def ellipsoid(self, center: Vec3, radii: Vec3, value: "float | ValueFn", tissue: int | None,
                  where: Iterable[int] | None = None) -> int:
        cx, cy, cz = center
        rx, ry, rz = (max(r, 1e-3) for r in radii)
        box = self.grid.box((cx - rx, cy - ry, cz - rz), (cx + rx, cy + ry, cz + rz))
        return self.paint(box, lambda z, y, x: ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
                          + ((z - cz) / rz) ** 2 <= 1.0, value, tissue, where)

    def capsule(self, p0: Vec3, p1: Vec3, radius: float, value: float, tissue: int | None,
                where: Iterable[int] | None = None) -> int:
        """Every voxel within `radius` of the segment p0-p1 (a cylinder with round caps)."""
        return self.capsules([p0], [p1], [radius], value, tissue, where)

    def tube(self, points: Sequence[Vec3], radius: float, value: float, tissue: int | None,
             where: Iterable[int] | None = None) -> int:
        return self.capsules(points[:-1], points[1:], [radius] * (len(points) - 1), value, tissue, where)

    def capsules(self, starts: Sequence[Vec3], ends: Sequence[Vec3], radii: Sequence[float], value: float,
                 tissue: int | None, where: Iterable[int] | None = None) -> int:
        """Paint capsule i (segment starts[i]-ends[i], radius radii[i]) for each i; returns how many voxels.

        A phantom paints ~2,800 capsules of ~140 voxels a volume, so one numpy pass per capsule is mostly
        call overhead; this tests every (capsule, voxel in its box) pair at once. It paints what painting
        the capsules one by one would: they share one value and tissue, so a voxel that an earlier capsule
        painted is either left alone by a later one (its new tissue is not in `where`) or repainted with
        the same values, and only the tissue a voxel had before the call decides whether it is painted.
        """
        a, b = np.asarray(starts, np.float32).reshape(-1, 3), np.asarray(ends, np.float32).reshape(-1, 3)
        radius = np.asarray(radii, np.float64).reshape(-1)
        if not len(a) == len(b) == len(radius):
            raise ValueError(f"{len(a)} starts, {len(b)} ends and {len(radius)} radii: one each per capsule")
        d = b - a
        # The float32 values of the per-capsule expressions (d @ d, r * r, min(a, b) - r) one capsule alone
        # would compute, so that every voxel decides exactly as it would there.
        dd = np.array([float(v @ v) or 1e-6 for v in d], np.float32)
        r2 = (radius * radius).astype(np.float32)
        pad = radius.astype(np.float32)[:, None]
        lo, hi = np.minimum(a, b) - pad, np.maximum(a, b) + pad
        bounds = [self.grid.index_ranges(axis, lo[:, 2 - axis], hi[:, 2 - axis]) for axis in range(3)]
        extent = np.stack([stop - start for start, stop in bounds], axis=1).clip(min=0)
        voxels = extent.prod(axis=1)
        allowed = None if where is None else _allowed_table(tuple(where))
        zc, yc, xc = (self.grid.coord(axis, slice(None)) for axis in range(3))
        painted: list[np.ndarray] = []
        # Batches of at most ~_SLAB_VOXELS pairs bound the temporaries on paper-size volumes.
        batch_of = np.cumsum(voxels) // _SLAB_VOXELS
        nonempty = voxels > 0
        for batch in np.unique(batch_of[nonempty]):
            ids = np.flatnonzero((batch_of == batch) & nonempty)
            owner = np.repeat(ids, voxels[ids])
            local = np.arange(owner.size) - np.repeat(np.cumsum(voxels[ids]) - voxels[ids], voxels[ids])
            ny, nx = extent[owner, 1], extent[owner, 2]
            iz, rest = np.divmod(local, ny * nx)
            iy, ix = np.divmod(rest, nx)
            iz, iy, ix = iz + bounds[0][0][owner], iy + bounds[1][0][owner], ix + bounds[2][0][owner]
            px = xc[ix] - a[owner, 0]
            py = yc[iy] - a[owner, 1]
            pz = zc[iz] - a[owner, 2]
            do = d[owner]
            t = clip01((px * do[:, 0] + py * do[:, 1] + pz * do[:, 2]) / dd[owner])
            inside = ((px - t * do[:, 0]) ** 2 + (py - t * do[:, 1]) ** 2 + (pz - t * do[:, 2]) ** 2) <= r2[owner]
            flat = np.unique(np.ravel_multi_index((iz[inside], iy[inside], ix[inside]), self.grid.shape))
            if allowed is not None:
                flat = flat[allowed[self.tissue.reshape(-1)[flat]]]
            np.put(self.hu, flat, value)
            if tissue is not None:
                np.put(self.tissue, flat, tissue)
            painted.append(flat)
        return np.unique(np.concatenate(painted)).size if len(painted) > 1 else sum(f.size for f in painted)


def smooth_inplane(volume: np.ndarray) -> np.ndarray:
    """A [1, 2, 1]/4 blur along rows and columns: a cheap stand-in for the scanner's point spread."""
    out = volume.copy()
    for axis in (1, 2):
        src = out.copy()
        lo = [slice(None)] * 3
        mid = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], mid[axis], hi[axis] = slice(0, -2), slice(1, -1), slice(2, None)
        out[tuple(mid)] = 0.25 * src[tuple(lo)] + 0.5 * src[tuple(mid)] + 0.25 * src[tuple(hi)]
    return out
