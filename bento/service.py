"""BentoML service: basic-block throughput from the promoted surrogate, llvm-mca where it is not trusted.

Configuration (environment, read by `surrogate_ops.config.Settings`, which documents each variable):
    SURROGATE_OPS_MODEL     models:/NAME@ALIAS or model directories, comma-separated, one per mcpu
                            [default: ./models/<mcpu>/ beside this file when a bento carries them,
                            else the champion of every bundled CPU's surrogate from the MLflow registry]
    MLFLOW_TRACKING_URI     the registry (default: surrogate-ops's own store, see `surrogate-ops tracking-uri`)
    SURROGATE_OPS_LLVM_MCA  the llvm-mca binary for the fallback (default: llvm-mca on PATH)
    SURROGATE_OPS_MCA_PARAMS  JSON of llvm-mca parameters for the fallback on the model's mcpu (from
                            `surrogate-ops optimize --out`) [default: ./params.json when a bento carries one]
    SURROGATE_OPS_THREADS   requests answered at once [default: 8]
    SURROGATE_OPS_MAX_BLOCKS, SURROGATE_OPS_MAX_INSTRUCTIONS, SURROGATE_OPS_MAX_BYTES, SURROGATE_OPS_MAX_BODY,
    SURROGATE_OPS_MCA_TIMEOUT, SURROGATE_OPS_MCA_RETRY, SURROGATE_OPS_MCA_CHUNK, SURROGATE_OPS_MCA_GATHER,
    SURROGATE_OPS_LINE_CACHE and the rest of `serving.Limits`: request limits (a body over MAX_BODY is refused
                            with 413 before it is read), llvm-mca's timeout per call and how long a failed
                            llvm-mca is left alone, how many waiting blocks of concurrent requests one
                            llvm-mca call gathers

    POST /predict       {"blocks": ["<asm>", ...], "mcpu": "haswell", "exact": false, "max_error": 0.05}
                        (typed strictly: "exact": "yes" or an unknown field is a 400, not a guess)
    GET  /ops/healthz   readiness: the surrogate of each mcpu (version, engine), mode (surrogate+llvm-mca
                        or llvm-mca-only)
    GET  /docs          the OpenAPI page
"""

from __future__ import annotations

import atexit
import ctypes
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

import bentoml
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict
from starlette.responses import JSONResponse

from surrogate_ops.config import settings
from surrogate_ops.llvm_tools import end_orphans
from surrogate_ops.programs.setting import McaSetting
from surrogate_ops.serving.policy import Limits, Rejected
from surrogate_ops.serving.server import Server

BUNDLED_MODELS = Path(__file__).resolve().parent / "models"  # models/<mcpu>/, one per CPU the bento serves
BUNDLED_PARAMS = Path(__file__).resolve().parent / "params.json"
ops = FastAPI(title="surrogate-ops operations")


def _mca_setting() -> McaSetting | None:
    """The fallback's llvm-mca setting: SURROGATE_OPS_MCA_PARAMS (a file or learned:CPU), else the bento's
    params.json; parsed here, checked once by the Server against its llvm-mca."""
    spec = settings().mca_setting or (str(BUNDLED_PARAMS) if BUNDLED_PARAMS.is_file() else None)
    return McaSetting.load(spec) if spec else None


def _die_with_parent() -> None:
    """This worker ends when the process that started it does (`kill -9` of `surrogate-ops serve`
    would otherwise leave it holding the port)."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def _take_over() -> None:
    """Say so when the worker before this one died without shutting down (`kill -9`, the kernel's
    OOM killer), and end the llvm-mca processes it left running; then leave the same note for the
    next one, removed on a clean exit."""
    log = logging.getLogger("surrogate_ops.service")
    note = Path(os.environ.get("BENTOML_HOME") or tempfile.gettempdir()) / "surrogate-ops-worker.json"
    try:
        before = json.loads(note.read_text())
    except (OSError, ValueError):
        before = None
    if before and before.get("pid") != os.getpid() and not Path(f"/proc/{before['pid']}").exists():
        ended = end_orphans(int(before["pid"]))
        log.warning("the previous worker (pid %s, up %.0f s) died without shutting down (killed by a signal, or out of "
                    "memory); this worker (pid %d) replaces it%s", before["pid"], time.time() - before.get("started", 0),
                    os.getpid(), f"; ended {ended} llvm-mca process group(s) it left running" if ended else "")
    note.parent.mkdir(parents=True, exist_ok=True)
    note.write_text(json.dumps({"pid": os.getpid(), "started": time.time()}))
    atexit.register(lambda: note.unlink(missing_ok=True))


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is refused with 413 before it is read, by its
    Content-Length, or, sent in chunks without one, as soon as what came exceeds it; nothing of it is
    kept (a 600 MB body once grew the worker by 1.7 GB before the request was refused)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(send, int(length) if length.isdigit() else None)
        received, refused = 0, False

        async def counted():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    await self._refuse(send, None)
                    return {"type": "http.disconnect"}
            return message

        async def unless_refused(message):
            if not refused:
                await send(message)

        await self.app(scope, counted, unless_refused)

    async def _refuse(self, send, length: int | None) -> None:
        size = f"{length:,} bytes" if length is not None else "more"
        body = json.dumps({"error": f"request body of {size}, over the limit of {self.max_bytes:,} bytes "
                                    "(SURROGATE_OPS_MAX_BODY)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class PredictRequest(BaseModel):
    """POST /predict's body, checked strictly: a field of the wrong type or one this service does not
    know is the client's error, not a value to coerce or ignore."""

    model_config = ConfigDict(extra="forbid", strict=True)
    blocks: list[str]
    mcpu: str = "haswell"
    exact: bool = False
    max_error: float | None = None
    target: Literal["mca", "measured"] = "mca"


class _ClientErrors(logging.Filter):
    """A request BentoML itself refuses (malformed JSON, a field of the wrong type) is the client's
    error: one warning line, not an error with a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if type(error).__name__ == "ValidationError" or 400 <= getattr(getattr(error, "error_code", 0), "value", 0) < 500:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args, record.exc_info = f"{record.getMessage()}: {str(error).splitlines()[0]}", (), None
        return True


def _metrics(server: Server) -> None:
    """Prometheus metrics of the service's own (beside BentoML's request metrics, all on /metrics),
    fed after each request through `Server.observe`."""
    import threading

    import prometheus_client as prom  # imported in the worker, after BentoML set up multiprocess metrics

    blocks = prom.Counter("surrogate_ops_blocks", "Blocks answered, by mcpu, source (surrogate, llvm-mca, error) "
                          "and the fallback rule that sent them to llvm-mca", ["mcpu", "source", "rule"])
    cache = prom.Counter("surrogate_ops_llvm_mca_cache", "Lookups in the cache of llvm-mca's answers", ["result"])
    waited = prom.Histogram("surrogate_ops_fallback_seconds", "Seconds a request with fallback blocks waited for "
                            "llvm-mca", buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
    queue = prom.Gauge("surrogate_ops_fallback_queue", "llvm-mca chunks waiting for a core", multiprocess_mode="max")
    seen, lock = [0, 0], threading.Lock()

    def observe(tally, seconds: float) -> None:
        for (mcpu, source, rule), n in tally.items():
            blocks.labels(mcpu, source, rule or "none").inc(n)
        if seconds:
            waited.observe(seconds)
        with lock:
            hits, misses = server.mca_cache.hits, server.mca_cache.misses
            cache.labels("hit").inc(hits - seen[0])
            cache.labels("miss").inc(misses - seen[1])
            seen[:] = hits, misses
        queue.set(len(server.mca_pool))

    server.observe = observe


@bentoml.asgi_app(ops, path="/ops")
@bentoml.service(name="surrogate-ops", workers=1, threads=settings().threads,
                 traffic={"timeout": 120, "max_concurrency": 256})
class Surrogate:
    def __init__(self) -> None:
        _die_with_parent()
        _take_over()
        logging.getLogger("bentoml._internal.server.http_app").addFilter(_ClientErrors())
        self.server = Server.from_uri(settings().model, BUNDLED_MODELS, llvm_mca=settings().llvm_mca,
                                      limits=Limits.from_environment(), mca_setting=_mca_setting())
        _metrics(self.server)

    @bentoml.api(input_spec=PredictRequest)
    def predict(self, blocks: list[str], mcpu: str = "haswell", exact: bool = False,
                max_error: float | None = None, target: str = "mca") -> list[dict]:
        """Cycles per block (llvm-mca's measure: 100 iterations), in order: {"cycles", "source"} (+ "reason"
        when llvm-mca answered in the surrogate's place, + "estimated_error", the surrogate's estimate of
        its relative error, where it makes one) or {"error"}. With max_error (0.05: 5%), blocks estimated
        above it are answered by llvm-mca. With target "measured", the surrogate of the CPU's measured
        throughput answers (where the service has one: `serve --model models:/llvm-mca-<cpu>-measured@champion`).
        A request refused as a whole gets a 4xx (503 when it needs
        llvm-mca and llvm-mca is down) with {"error"}."""
        try:
            return self.server.predict(blocks, mcpu, exact, max_error, target)
        except Rejected as exc:
            logging.getLogger("surrogate_ops.service").info("refused with %d: %s", exc.status, exc)
            return JSONResponse({"error": str(exc)}, status_code=exc.status)  # type: ignore[return-value]

    @ops.get("/healthz")
    def healthz(self) -> dict:
        return self.server.status()


Surrogate.add_asgi_middleware(BodyLimit, max_bytes=Limits.from_environment().max_body)
