"""Answering requests: the service's core and what ships it (the pyfunc, the bento, the container).

Holds `server` (limits, fallback policy, the llvm-mca pool, `Server.answer`, what `predict`, the
pyfunc and the BentoML service all call), `pyfunc` (the registered MLflow model), `bento`, `containers`
and `coverage` (how much of a user's code each CPU's surrogate answers). May import `registry`,
`builds`, `runtime`, `programs`, `blocks` and below.
"""
