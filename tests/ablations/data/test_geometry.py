"""The renderer's cheap paths (cached axis coordinates, math.floor bounds, the cached tissue table,
clip01) give exactly what the numpy expressions they replace give: phantoms must not change by a bit."""

import numpy as np
import pytest

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
    # Python floats and float32 scalars (what capsule passes), including bounds on voxel centres.
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
