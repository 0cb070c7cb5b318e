"""A work directory's MLflow store for module-scoped fixtures (a test's own store is conftest's
`fresh_home` fixture)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def in_home(home: Path):
    """For module-scoped fixtures: work in `home`'s store; neither it nor the MLflow variables that
    configuring it sets outlive the fixture."""
    from surrogate_ops.registry import tracking

    keys = ("SURROGATE_OPS_HOME",)
    saved = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_") or k in keys}
    os.environ["SURROGATE_OPS_HOME"] = str(home)
    try:
        tracking.configure()
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("MLFLOW_") or k in keys]:
            del os.environ[key]
        os.environ.update(saved)


def store_with(tmp_path_factory, **bundles: str) -> Path:
    """A fresh store in which the test registers bundled surrogates: name=bundle, e.g.
    svc_test="llvm-mca-haswell" registers svc-test."""
    from surrogate_ops.registry import versions

    home = tmp_path_factory.mktemp("home")
    with in_home(home):
        for name, bundle in bundles.items():
            versions.ensure_default(name.replace("_", "-"), bundle=bundle)
    return home
