"""Registered surrogates: the MLflow store, its versions and aliases, and the one model resolver.

`registry.open(model, mcpu)` is how every stage (the CLI, the service, the pyfunc, Python callers)
turns a model directory, a `models:/NAME@ALIAS` URI or nothing (the champion of a CPU) into a model
directory. Holds `tracking` (the store, configured once), `versions` (log, register, resolve,
download), `pins` (the last resolution, trusted while the store is unchanged), `evaluate`,
`promotion` and `server` (a team's tracking server). May import `runtime`, `data` and below.
"""

from surrogate_ops.registry.resolve import Opened, open, served  # noqa: E402,A004  the stage's entry

__all__ = ["Opened", "open", "served"]
