"""Generated phantom trees, rendered once into pytest's cache (keyed by a hash of the generator's
source and the request, so a changed generator regenerates) because rendering costs CPU minutes."""

import hashlib
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def phantom_tree(request):
    def make(n: int, valid_fraction: float, seed: int = 0) -> Path:
        import ablations.data as data_pkg
        from ablations.data.synthetic import generate_dataset

        source = b"".join(p.read_bytes() for p in sorted(Path(data_pkg.__file__).parent.glob("*.py")))
        key = hashlib.sha256(source + f"{n}-{valid_fraction}-{seed}".encode()).hexdigest()[:12]
        root = Path(request.config.cache.mkdir(f"ablations-phantoms-{key}"))
        if not (root / "complete").exists():
            generate_dataset(root, n, "tiny", seed, valid_fraction, workers=2, progress=False)
            (root / "complete").write_text("ok")
        return root

    return make
