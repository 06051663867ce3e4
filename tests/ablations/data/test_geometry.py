"""The renderer's cheap paths (cached axis coordinates, vectorised bounds, the cached tissue table, clip01,
capsules painted in one pass) give exactly what the plain expressions they replace give: phantoms must
not change by a bit."""

import numpy as np
import pytest

import ablations.data.geometry as geometry
from ablations.data.geometry import Canvas, Grid, clip01

# Odd sizes: each axis has a voxel centre exactly on 0, where a floor or ceil bound is easiest to get wrong.
GRID = Grid((7, 13, 11), (1.5, 0.7, 0.7), scale=1.3)


def reference_coord(grid: Grid, axis: int, index: np.ndarray) -> np.ndarray:
    return ((index + 0.5 - grid.shape[axis] / 2.0) * grid.spacing[axis] * grid.scale).astype(np.float32)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("window", [slice(0, None), slice(2, 5), slice(3, 3), slice(-4, None), slice(5, 99)])
def test_slice_coordinates_equal_the_formula_bit_for_bit(axis, window):
    index = np.arange(*window.indices(GRID.shape[axis]))
    got = GRID.coord(axis, window)
    np.testing.assert_array_equal(got, reference_coord(GRID, axis, index))
    assert got.dtype == np.float32 and not got.flags.writeable  # a shared cache: callers must not write


def test_index_coordinates_are_computed_not_cached():
    index = np.array([[0, 6], [3, 1]])
    np.testing.assert_array_equal(GRID.coord(0, index), reference_coord(GRID, 0, index))


def test_index_range_matches_numpy_floor_and_ceil():
    rng = np.random.default_rng(0)
    # Python floats (ellipsoids) and float32 scalars (capsules), including bounds on voxel centres.
    centres = [float(c) for c in GRID.coord(2, slice(None))]
    n, step = GRID.shape[2], GRID.step(2)
    for lo in list(rng.uniform(-20, 20, 200)) + list(rng.uniform(-20, 20, 50).astype(np.float32)) + centres:
        hi = lo + abs(float(rng.normal(0, 5)))
        start = int(np.floor(lo / step + n / 2.0 - 0.5))
        stop = int(np.ceil(hi / step + n / 2.0 - 0.5)) + 1
        assert GRID.index_range(2, lo, hi) == slice(max(start, 0), min(max(stop, 0), n))


def test_clip01_equals_np_clip_in_dtype_and_value():
    values = np.concatenate([np.linspace(-2, 3, 101), [0.0, -0.0, 1.0, np.inf, -np.inf]]).astype(np.float32)
    got = clip01(values[::3])  # a non-contiguous view
    np.testing.assert_array_equal(got, np.clip(values[::3], 0.0, 1.0))
    assert got.dtype == np.float32
    assert clip01(np.float32(1.7)) == np.float32(1.0)


def test_where_restricts_painting_to_the_listed_tissues_on_repeated_calls():
    canvas = Canvas(GRID, fill_hu=0.0, fill_tissue=0)
    canvas.tissue[:, :, :5] = 3
    for _ in range(2):  # the second call reuses the cached table; it must not have been modified
        canvas.paint(GRID.full, lambda z, y, x: np.ones_like(x, dtype=bool), 100.0, 7, where=[3])
    assert (canvas.hu[:, :, :5] == 100.0).all() and (canvas.hu[:, :, 5:] == 0.0).all()
    assert (canvas.tissue[:, :, :5] == 7).all() and (canvas.tissue[:, :, 5:] == 0).all()


def test_index_ranges_on_arrays_equal_index_range_per_bound():
    rng = np.random.default_rng(1)
    lo = rng.uniform(-12, 12, 300).astype(np.float32)
    hi = lo + rng.uniform(0, 6, 300).astype(np.float32)
    for axis in range(3):
        starts, stops = GRID.index_ranges(axis, lo, hi)
        want = [GRID.index_range(axis, *bounds) for bounds in zip(lo, hi)]
        assert [slice(int(start), int(stop)) for start, stop in zip(starts, stops)] == want


def paint_capsules_one_by_one(canvas: Canvas, starts, ends, radii, value, tissue, where) -> int:
    """The reference: each capsule in turn over the whole grid (no boxes), its distance test written out
    in float32 as one capsule computes it, `where` checked against the tissue as it is at that moment."""
    z, y, x = np.meshgrid(*(reference_coord(GRID, axis, np.arange(n)) for axis, n in enumerate(GRID.shape)),
                          indexing="ij")
    painted = np.zeros(GRID.shape, dtype=bool)
    for p0, p1, radius in zip(starts, ends, radii):
        a, b = np.asarray(p0, np.float32), np.asarray(p1, np.float32)
        d = b - a
        dd = float(d @ d) or 1e-6
        px, py, pz = x - a[0], y - a[1], z - a[2]
        t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / dd, 0.0, 1.0)
        mask = (px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2 <= radius * radius
        if where is not None:
            mask &= np.isin(canvas.tissue, list(where))
        canvas.hu[mask] = value
        if tissue is not None:
            canvas.tissue[mask] = tissue
        painted |= mask
    return int(painted.sum())


def striped_canvas() -> Canvas:
    canvas = Canvas(GRID, fill_hu=-1000.0, fill_tissue=1)
    canvas.tissue[:, ::3, :] = 2
    canvas.tissue[::2, :, 4:] = 3
    canvas.hu[canvas.tissue == 3] = 40.0
    return canvas


@pytest.mark.parametrize("tissue, where", [(5, None), (5, (1, 3)), (3, (1, 3)), (None, (2,))],
                         ids=["anywhere", "new-tissue-not-in-where", "new-tissue-in-where", "tissue-kept"])
@pytest.mark.parametrize("slab_voxels", [4_000_000, 40], ids=["one-batch", "many-batches"])
def test_capsules_paint_what_one_capsule_at_a_time_paints(monkeypatch, tissue, where, slab_voxels):
    monkeypatch.setattr(geometry, "_SLAB_VOXELS", slab_voxels)
    rng = np.random.default_rng(2)
    n = 40
    # Endpoints inside and outside the grid (half-extent ~6.3 mm), overlapping capsules, radii from
    # below a voxel to wider than the grid, and one segment of zero length.
    starts = rng.uniform(-9, 9, (2 * n, 3))[::2]  # a non-contiguous view, as callers may pass
    ends = starts + rng.normal(0, 4, (n, 3))
    ends[7] = starts[7]
    radii = list(rng.uniform(0.2, 3.0, n))
    radii[11] = 9.0
    got, want = striped_canvas(), striped_canvas()
    count = got.capsules(starts, ends, radii, 60.0, tissue, where)
    want_count = paint_capsules_one_by_one(want, starts, ends, radii, 60.0, tissue, where)
    np.testing.assert_array_equal(got.hu, want.hu)
    np.testing.assert_array_equal(got.tissue, want.tissue)
    assert count == want_count > 0
    assert (got.tissue != striped_canvas().tissue).any() or tissue is None


def test_tube_and_capsule_paint_their_segments():
    points = [(-5.0, -4.0, -6.0), (0.5, 1.0, 0.0), (4.0, -2.0, 5.5), (4.0, -2.0, 5.5)]
    tube, segments = striped_canvas(), striped_canvas()
    tube.tube(points, 1.3, 60.0, 5, where=(1, 2))
    for p, q in zip(points[:-1], points[1:]):
        segments.capsule(p, q, 1.3, 60.0, 5, where=(1, 2))
    np.testing.assert_array_equal(tube.hu, segments.hu)
    np.testing.assert_array_equal(tube.tissue, segments.tissue)


def test_no_capsules_paint_nothing():
    canvas = striped_canvas()
    assert canvas.capsules([], [], [], 60.0, 5) == 0
    np.testing.assert_array_equal(canvas.tissue, striped_canvas().tissue)


def test_capsules_reject_unmatched_arguments():
    with pytest.raises(ValueError, match="2 starts, 2 ends and 3 radii"):
        striped_canvas().capsules([(0, 0, 0)] * 2, [(1, 1, 1)] * 2, [1.0] * 3, 60.0, 5)
