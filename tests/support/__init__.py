"""What the tests share, one module per concern; conftest.py holds only fixtures and hooks.

- `support.data`: the checked-in fixtures, the blocks the service tests send, the shared BHive
  data (../shared, optional: tests marked `shared_data` skip without it), BHive-format CSVs.
- `support.cli`: running `surrogate-ops` as a user does: `CLI`, its CSV rows, the time one
  command may take, stand-in programs (a hanging or crashing llvm-mca).
- `support.stores`: a work directory's MLflow store, for module-scoped fixtures.
- `support.servers`: the real service over HTTP (`surrogate-ops serve` on a free port).

Test files import from these modules (`from support.cli import CLI, rows`). tests/ is on sys.path
through pyproject's `pythonpath`, so this holds under `python -m pytest` from the repository
root, from any other directory, and under any import mode.
"""
