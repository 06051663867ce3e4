"""The top-level package names DESIGN.md gives this repo do not collide with what its dependencies import.

`kernels` is also the import name of Hugging Face's hub kernel loader. transformers imports that loader
whenever `is_kernels_available()` says a compatible version is installed, and it finds this repo's
kernels/ first on the path, so `import transformers.activations` (which every BERT text encoder needs)
fails with "cannot import name 'CUDAProperties' from 'kernels'". transformers 5.25 made the loader a
hard requirement, hence pyproject's `transformers<5.25`; a loader installed by hand breaks it too.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _hub_kernels_version() -> str | None:
    try:
        return importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        return None


def test_import_kernels_finds_this_repos_package() -> None:
    spec = importlib.util.find_spec("kernels")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).resolve() == ROOT / "kernels" / "__init__.py"


def test_transformers_does_not_take_our_kernels_for_hub_kernels() -> None:
    import transformers
    from transformers.utils import import_utils

    is_kernels_available = getattr(import_utils, "is_kernels_available", None)
    hub_available = bool(is_kernels_available()) if is_kernels_available is not None else False
    assert not hub_available, (
        f"transformers {transformers.__version__} sees Hugging Face's `kernels` {_hub_kernels_version()} as "
        "usable and would import this repo's kernels/ in its place: install transformers<5.25 "
        "(pyproject.toml) and `pip uninstall kernels`"
    )
    # The module whose import broke under transformers 5.25; BertModel's activations come from it.
    activations = importlib.import_module("transformers.activations")
    assert callable(activations.get_activation("gelu"))
