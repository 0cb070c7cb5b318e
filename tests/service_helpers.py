"""Kept only for tests/test_readme.py, which still imports `store_with` from here: the shared helpers
are in the support package now (support/__init__.py). Import from support.stores, then delete this."""

from support.stores import store_with

__all__ = ["store_with"]
