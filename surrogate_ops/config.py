"""Settings and named choices: the one place surrogate-ops reads its environment, and the words it
uses for engines, answer sources and devices.

Settings. Every `SURROGATE_OPS_*` variable is read here, by its literal name, into one frozen
`Settings` (its docstring lists each name, meaning and default); the rest of the package asks
`settings()`. A command that hands settings to a child process (`serve` starts the BentoML service,
which reads its configuration from the environment) builds the child's environment with
`child_environ`; the CLI's `--llvm-mca` is `export`ed, for this process and the ones it starts. To add
a variable: a field of `Settings`, its line in the docstring, its read in `from_environ` and its name
in `VARIABLES` (tests/test_settings.py checks that they agree and that nothing else reads it).

Where state lives. `SURROGATE_OPS_HOME` wins; otherwise a source checkout keeps it in
`<checkout>/surrogate-ops-work` and an installed package in `~/.surrogate-ops`. The location never
depends on the current directory, so commands run from anywhere find the same registry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum, unique
from pathlib import Path
from typing import Literal, TypeVar

from surrogate_ops.errors import SurrogateOpsError

N = TypeVar("N", int, float)
Frontend = Literal["compiled", "python"]  # what reads blocks into token ids (`blocks.compiled`)
FRONTENDS: tuple[Frontend, ...] = ("compiled", "python")
# compiled helpers (the parametric llvm-mca driver, the front end) depend on their source and the
# LLVM only, not on a work directory: one cache per user
BUILD_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "surrogate-ops" / "bin"


@dataclass(frozen=True)
class Settings:
    """surrogate-ops's environment, as one value. A variable unset or empty means its default.

    variable                              field                   meaning [default]
    SURROGATE_OPS_HOME                    home                    the work directory: datasets, the MLflow store, builds
                                                                  [<checkout>/surrogate-ops-work in a source checkout,
                                                                  else ~/.surrogate-ops]
    SURROGATE_OPS_LLVM_MCA                llvm_mca                the llvm-mca to run (also `surrogate-ops --llvm-mca`)
                                                                  [llvm-mca on PATH, else llvm-mca-22 ... llvm-mca-14]
    SURROGATE_OPS_LLVM_MC                 llvm_mc                 the llvm-mc that assembles hex blocks [likewise on PATH]
    SURROGATE_OPS_LLVM_OBJDUMP            llvm_objdump            the llvm-objdump that cuts binaries [likewise on PATH]
    SURROGATE_OPS_FRONTEND                frontend                compiled: blocks are read by the compiled front end
                                                                  (blocks/compiled.py) where g++ can build it; python:
                                                                  by the Python front end alone [compiled]
    SURROGATE_OPS_MCA_TIMEOUT             mca_timeout             seconds an LLVM tool's call may take unless told
                                                                  otherwise: a probe, a service's llvm-mca chunk [30]
    SURROGATE_OPS_MCA_RETRY               mca_retry               seconds a failed probe or a hanging llvm-mca is left
                                                                  alone before it is asked again [10]

    The BentoML service's (bento/service.py; `surrogate-ops serve` writes the first two for it):
    SURROGATE_OPS_MODEL                   model                   models:/NAME@ALIAS or model directories, comma-separated,
                                                                  one per mcpu [the bento's models/<mcpu>/, else the
                                                                  champion of every bundled CPU's surrogate]
    SURROGATE_OPS_MCA_PARAMS              mca_setting             llvm-mca's setting for the fallback (a file or learned:CPU) on
                                                                  the model's mcpu [the bento's params.json, if any]
    SURROGATE_OPS_THREADS                 threads                 requests answered at once [8]
    Its request limits (`serving.Limits.from_environment`), each over `serving.Limits`'s own default:
    SURROGATE_OPS_MAX_BLOCKS              max_blocks              blocks per request [4096]
    SURROGATE_OPS_MAX_INSTRUCTIONS        max_instructions        instructions per block [512]
    SURROGATE_OPS_MAX_BYTES               max_bytes               bytes of assembly per request [4 MiB]
    SURROGATE_OPS_MAX_BODY                max_body                bytes of a request's body, refused (413) before it is
                                                                  read [9 MiB]
    SURROGATE_OPS_MCA_CHUNK               mca_chunk               blocks per llvm-mca call [64]
    SURROGATE_OPS_MCA_CHUNK_INSTRUCTIONS  mca_chunk_instructions  instructions per llvm-mca call [1024]
    SURROGATE_OPS_MCA_GATHER              mca_gather              blocks of concurrent requests one llvm-mca call may
                                                                  gather [64; 0: none]
    SURROGATE_OPS_NETWORK_GATHER          network_gather          blocks of concurrent requests one call of a network
                                                                  may gather [2048; 0: none]
    SURROGATE_OPS_LINE_CACHE              line_cache              distinct lines remembered, shared among the
                                                                  surrogates [32768]
    SURROGATE_OPS_MCA_CACHE_BYTES         mca_cache_bytes         llvm-mca's answers remembered, by the bytes of their
                                                                  blocks' text [16 MiB]
    SURROGATE_OPS_JOB                     job                     the data-parallel training job whose run a restarted
                                                                  process group continues (`train --ray` sets it for
                                                                  its workers; under torchrun, torchrun's job id)

    Not a setting: `TOOL_PARENT` (SURROGATE_OPS_TOOL_PARENT) is written into each LLVM tool's
    environment, never read from ours (`llvm_tools.end_orphans` finds it in /proc).
    """

    home: Path | None = None
    llvm_mca: str | None = None
    llvm_mc: str | None = None
    llvm_objdump: str | None = None
    frontend: Frontend = "compiled"
    mca_timeout: float = 30.0
    mca_retry: float = 10.0
    model: str | None = None
    mca_setting: str | None = None  # a setting file or learned:CPU (`programs.setting`)
    threads: int = 8
    max_blocks: int | None = None  # None: `serving.Limits`'s default, here and below
    max_instructions: int | None = None
    max_bytes: int | None = None
    max_body: int | None = None
    mca_chunk: int | None = None
    mca_chunk_instructions: int | None = None
    mca_gather: int | None = None
    network_gather: int | None = None
    line_cache: int | None = None
    mca_cache_bytes: int | None = None
    job: str | None = None  # `training.distributed.job_id`

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> Settings:
        """The settings an environment gives; a value that does not parse is a SurrogateOpsError
        that names its variable."""

        def text(name: str) -> str | None:
            return env.get(name) or None

        def number(name: str, kind: Callable[[str], N]) -> N | None:
            value = env.get(name)
            if not value:
                return None
            try:
                return kind(value)
            except ValueError:
                what = "an integer" if kind is int else "a number"
                raise SurrogateOpsError(f"{name}={value!r} is not {what}") from None

        def path(name: str) -> Path | None:
            value = env.get(name)
            return Path(value).expanduser() if value else None

        timeout, retry = number("SURROGATE_OPS_MCA_TIMEOUT", float), number("SURROGATE_OPS_MCA_RETRY", float)
        threads = number("SURROGATE_OPS_THREADS", int)
        frontend = text("SURROGATE_OPS_FRONTEND") or cls.frontend
        if frontend not in FRONTENDS:
            raise SurrogateOpsError(f"SURROGATE_OPS_FRONTEND={frontend!r} is not one of {', '.join(FRONTENDS)}")
        return cls(
            home=path("SURROGATE_OPS_HOME"),
            llvm_mca=text("SURROGATE_OPS_LLVM_MCA"),
            llvm_mc=text("SURROGATE_OPS_LLVM_MC"),
            llvm_objdump=text("SURROGATE_OPS_LLVM_OBJDUMP"),
            frontend=frontend,
            mca_timeout=cls.mca_timeout if timeout is None else timeout,
            mca_retry=cls.mca_retry if retry is None else retry,
            model=text("SURROGATE_OPS_MODEL"),
            mca_setting=text("SURROGATE_OPS_MCA_PARAMS"),
            threads=cls.threads if threads is None else threads,
            max_blocks=number("SURROGATE_OPS_MAX_BLOCKS", int),
            max_instructions=number("SURROGATE_OPS_MAX_INSTRUCTIONS", int),
            max_bytes=number("SURROGATE_OPS_MAX_BYTES", int),
            max_body=number("SURROGATE_OPS_MAX_BODY", int),
            mca_chunk=number("SURROGATE_OPS_MCA_CHUNK", int),
            mca_chunk_instructions=number("SURROGATE_OPS_MCA_CHUNK_INSTRUCTIONS", int),
            mca_gather=number("SURROGATE_OPS_MCA_GATHER", int),
            network_gather=number("SURROGATE_OPS_NETWORK_GATHER", int),
            line_cache=number("SURROGATE_OPS_LINE_CACHE", int),
            mca_cache_bytes=number("SURROGATE_OPS_MCA_CACHE_BYTES", int),
            job=text("SURROGATE_OPS_JOB"),
        )

    def tool(self, name: str) -> tuple[str | None, str]:
        """(the path set for LLVM tool `name`, e.g. "llvm-mca", or None; the variable that sets it)."""
        field = name.replace("-", "_")
        return getattr(self, field), VARIABLES[field]


VARIABLES: dict[str, str] = {  # field -> its variable: what `child_environ` and `export` write
    "home": "SURROGATE_OPS_HOME",
    "llvm_mca": "SURROGATE_OPS_LLVM_MCA",
    "llvm_mc": "SURROGATE_OPS_LLVM_MC",
    "llvm_objdump": "SURROGATE_OPS_LLVM_OBJDUMP",
    "frontend": "SURROGATE_OPS_FRONTEND",
    "mca_timeout": "SURROGATE_OPS_MCA_TIMEOUT",
    "mca_retry": "SURROGATE_OPS_MCA_RETRY",
    "model": "SURROGATE_OPS_MODEL",
    "mca_setting": "SURROGATE_OPS_MCA_PARAMS",
    "threads": "SURROGATE_OPS_THREADS",
    "max_blocks": "SURROGATE_OPS_MAX_BLOCKS",
    "max_instructions": "SURROGATE_OPS_MAX_INSTRUCTIONS",
    "max_bytes": "SURROGATE_OPS_MAX_BYTES",
    "max_body": "SURROGATE_OPS_MAX_BODY",
    "mca_chunk": "SURROGATE_OPS_MCA_CHUNK",
    "mca_chunk_instructions": "SURROGATE_OPS_MCA_CHUNK_INSTRUCTIONS",
    "mca_gather": "SURROGATE_OPS_MCA_GATHER",
    "network_gather": "SURROGATE_OPS_NETWORK_GATHER",
    "line_cache": "SURROGATE_OPS_LINE_CACHE",
    "mca_cache_bytes": "SURROGATE_OPS_MCA_CACHE_BYTES",
    "job": "SURROGATE_OPS_JOB",
}
TOOL_PARENT = "SURROGATE_OPS_TOOL_PARENT"  # in an LLVM tool's environment: the id of the process that started it

_read: tuple[tuple[str | None, ...], Settings] | None = None  # (the variables as read, what they gave)


def settings(refresh: bool = False) -> Settings:
    """This process's settings: read once and kept. They are read again with `refresh`, and when this
    process's own SURROGATE_OPS_* variables are no longer what they were read from (a test that sets
    SURROGATE_OPS_HOME, `export`), so a kept value is never stale."""
    global _read
    seen = tuple(map(os.environ.get, VARIABLES.values()))
    read = _read
    if refresh or read is None or read[0] != seen:
        read = _read = (seen, Settings.from_environ(os.environ))
    return read[1]


def reload() -> Settings:
    """The settings read again from the environment."""
    return settings(refresh=True)


def child_environ(base: Mapping[str, str] | None = None, **changes: object) -> dict[str, str]:
    """The environment of a child process: `base` (default: this process's) with each setting named
    in `changes` written under its variable (`model=...` sets SURROGATE_OPS_MODEL; None unsets it)."""
    env = dict(os.environ if base is None else base)
    for field, value in changes.items():
        if value is None:
            env.pop(VARIABLES[field], None)
        else:
            env[VARIABLES[field]] = str(value)
    return env


def export(**changes: object) -> Settings:
    """Set settings for this process and the processes it starts (written to its environment, as
    `child_environ` writes them); the settings as they now are."""
    env = child_environ(**changes)
    for field in changes:
        if VARIABLES[field] in env:
            os.environ[VARIABLES[field]] = env[VARIABLES[field]]
        else:
            os.environ.pop(VARIABLES[field], None)
    return settings(refresh=True)


def work_dir() -> Path:
    home = settings().home
    if home is None:
        checkout = Path(__file__).resolve().parent.parent
        home = checkout / "surrogate-ops-work" if (checkout / "pyproject.toml").is_file() else Path.home() / ".surrogate-ops"
    home.mkdir(parents=True, exist_ok=True)
    return home.resolve()


def default_store_uri() -> str:
    """The MLflow store every command shares unless told otherwise: SQLite in the work directory."""
    return f"sqlite:///{work_dir() / 'mlflow.db'}"


def store_uri(tracking_uri: str | None = None) -> str:
    """The store a command uses: `--tracking-uri`, else MLFLOW_TRACKING_URI, else the default.
    (MLflow's own variable, which MLflow itself sets as it goes, so it is read each time, not kept.)"""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_store_uri()


def model_name(mcpu: str, target: str = "mca") -> str:
    """The registered name of the surrogate of llvm-mca on `mcpu` (one model per CPU), or with target
    "measured" of the one fine-tuned on `mcpu`'s measured throughput."""
    return f"llvm-mca-{mcpu}" + ("-measured" if target == "measured" else "")


def champion_uri(name: str) -> str:
    return f"models:/{name}@champion"


def model_uri(mcpu: str, target: str = "mca") -> str:
    """The champion of `mcpu`'s surrogate (of llvm-mca, or of measured throughput): what `predict --mcpu`
    and the service use by default."""
    return champion_uri(model_name(mcpu, target))


PRETRAINED = Path(__file__).resolve().parent / "pretrained"  # the bundled surrogates, a folder per registered name
DEFAULT_MCPU = "haswell"
DEFAULT_MODEL = model_name(DEFAULT_MCPU)  # the registered name of the bundled Haswell surrogate
DEFAULT_MODEL_URI = model_uri(DEFAULT_MCPU)  # what single-model commands use by default

# The named choices, here (not beside torch or TVM) so that the CLI lists them without importing either.
# Their values are what files, CSV columns and HTTP answers hold: never change one.
Device = Literal["cpu", "cuda", "auto"]  # where training runs (`loop.device`); auto: cuda where torch sees a GPU
DEVICES: tuple[Device, ...] = ("cpu", "cuda", "auto")
PRECISIONS = ("fp32", "bf16")  # training arithmetic (`LoopConfig.precision`): float32, or bfloat16 autocast
STREAM_ROWS = 2_000_000  # datasets with more rows train streamed from disk (`train --stream`, `training.streaming`)
MEASURE_ROUNDS = 3  # `measure`'s passes over the blocks; each block's median counts (`programs.measure`)
COMBINE_HOWS = ("ensemble", "soup")  # how several fine-tuned members answer as one (`training.combine`)


@unique
class EngineName(StrEnum):
    """What runs a surrogate's network (`engines.ENGINES` has a loader for each)."""

    ONNXRUNTIME = "onnxruntime"  # the ONNX export on ONNX Runtime's CPU provider
    TVM = "tvm"  # this host's TVM build
    TVM_CUDA = "tvm-cuda"  # the CUDA TVM build
    TORCH = "torch"  # the training module on the CPU
    TORCH_CUDA = "torch-cuda"  # the training module on a CUDA GPU


AUTO_ENGINE = "auto"  # not an engine: the one measured fastest on this host (`engines.fastest`)
ENGINE_CHOICES: tuple[str, ...] = (AUTO_ENGINE, *(e.value for e in EngineName))  # plain strings: click matches an Enum by its name


@unique
class Target(StrEnum):
    """What a surrogate predicts: llvm-mca's cycles, or the throughput measured on the CPU."""

    MCA = "mca"
    MEASURED = "measured"


class Source(StrEnum):
    """Who answered a block: the `source` of the service's answers and of `predict`'s and
    `coverage`'s rows, and a label of the service's metrics."""

    SURROGATE = "surrogate"
    LLVM_MCA = "llvm-mca"  # the real program, where the surrogate is not trusted or not asked
    ERROR = "error"  # nobody: the block's error instead of cycles


if __name__ == "__main__":  # `python -m surrogate_ops.config`: the work directory (MLproject runs its commands there)
    print(work_dir())
