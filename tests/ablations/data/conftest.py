"""A small synthetic CT-RATE tree shared by the data tests (tiny size: seconds to build)."""

from pathlib import Path

import pytest

# The GPU machine's image has neither package and runs `pytest -m gpu tests`; none of these tests
# needs a GPU, so there the folder is skipped with the reason instead of failing collection.
pytest.importorskip("nibabel")
pytest.importorskip("webdataset")

from ablations.data.synthetic import generate_dataset


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ctrate")
    generate_dataset(root, n=6, size="tiny", seed=3, valid_fraction=0.5, progress=False)
    return root
