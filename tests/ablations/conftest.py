"""Generated phantom trees, rendered once into pytest's cache (keyed by a hash of the generator's
source and the request, so a changed generator regenerates) because rendering costs CPU minutes."""

import hashlib
import os
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def phantom_tree(request):
    def make(n: int, valid_fraction: float, seed: int = 0) -> Path:
        import ablations.data as data_pkg
        from ablations.data.synthetic import generate_dataset

        source = b"".join(p.read_bytes() for p in sorted(Path(data_pkg.__file__).parent.glob("*.py")))
        key = hashlib.sha256(source + f"{n}-{valid_fraction}-{seed}".encode()).hexdigest()[:12]
        root = Path(request.config.cache.mkdir("ablations-phantoms")) / key
        if not root.exists():
            # Under pytest-xdist two workers may ask for the same tree at once: each renders into its own
            # folder and renames it into place, so a tree that exists is always complete.
            private = root.with_name(f"{key}.{os.getpid()}")
            shutil.rmtree(private, ignore_errors=True)
            generate_dataset(private, n, "tiny", seed, valid_fraction, workers=2, progress=False)
            try:
                private.rename(root)
            except OSError:  # another worker finished first; it rendered the same volumes
                shutil.rmtree(private)
        return root

    return make
