"""What the commands share: choices read from the preset tables, `--params` as an `McaSetting`, the
`--tracking-uri` option (the MLflow store configured once, before a command's body), `--weight`
and `--tune-shape` parsing, and the Ray cluster a command joins."""

from __future__ import annotations

import click

from surrogate_ops import presets
from surrogate_ops.config import DEVICES
from surrogate_ops.errors import SurrogateOpsError

# Choices come from the preset tables (data), read without importing torch or TVM, so --help is quick.
ARCHITECTURES = [k for k in presets.load("model_sizes") if not k.startswith("_")]


SIZES = list(dict.fromkeys(s for k, v in presets.load("model_sizes").items() if not k.startswith("_") for s in v))


PLATFORMS = [k for k in presets.load("platforms") if not k.startswith("_")]


PARAMS_HELP = " Or learned:CPU, the learned per-instruction table that ships (learned:haswell)."


def read_setting(spec: str | None, mcpus: tuple[str, ...] = ()):
    """--params as an `McaSetting`, checked against the llvm-mca of each of `mcpus` before any work starts."""
    if spec is None:
        return None
    from surrogate_ops.programs import read_setting as read

    return read(spec, mcpus)


def parse_weights(items: tuple[str, ...]) -> dict[str, float]:
    """--weight SOURCE=FACTOR items as {glob: factor}, in the order given."""
    parsed = {}
    for item in items:
        glob, _, factor = item.rpartition("=")
        try:
            parsed[glob] = float(factor)
        except ValueError:
            raise SurrogateOpsError(f"--weight {item!r}: expected SOURCE=FACTOR, e.g. 'generated:loops:*=3'") from None
        if not glob or not parsed[glob] > 0:
            raise SurrogateOpsError(f"--weight {item!r}: expected SOURCE=FACTOR with a glob and a positive factor")
    return parsed


def configure_tracking(ctx, param, value: str | None) -> str | None:
    """Point MLflow at the store; not in a torchrun process other than rank 0, which never touches
    it (rank 0 keeps the run: `training.distributed`)."""
    from surrogate_ops.registry import tracking
    from surrogate_ops.training.distributed import follower

    return value if follower() else tracking.configure(value)


def tracking_option(f=None, *, lazy: bool = False):
    """--tracking-uri, configured as it is parsed (before the command body); the command gets the URI.
    lazy: left to the command, which configures MLflow only when it needs the registry."""
    option = click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", metavar="URI",
                          callback=None if lazy else configure_tracking,
                          help="MLflow tracking store [default: SQLite in the work directory; also MLFLOW_TRACKING_URI].")
    return option(f) if f is not None else option


def aliases_line(registered) -> str:
    if registered.aliases:
        return f"aliases: {', '.join(registered.aliases)}"
    return "no alias: a newer version, registered beside this one, is challenger"


def shape_option(ctx, param, value: str) -> tuple[int, int, int]:
    """BATCHxINSTRUCTIONSxTOKENS, checked before any work starts."""
    parts = value.lower().split("x")
    if len(parts) != 3 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise click.BadParameter(f"{value!r} is not BATCHxINSTRUCTIONSxTOKENS (positive integers)")
    return tuple(int(part) for part in parts)


def join_cluster(address: str | None):
    """The Ray cluster at `address` (--ray), or None to run on this machine's cores."""
    if address is None:
        return None
    from surrogate_ops.programs import cluster

    joined = cluster.connect(address)
    click.echo(f"llvm-mca on the Ray cluster at {address}: {joined.cpus} CPUs", err=True)
    return joined


def cluster_report(cluster) -> str:
    nodes = ", ".join(f"{node[:8]} {count}" for node, count in cluster.nodes.most_common())
    return f"chunks answered by {len(cluster.nodes)} Ray node(s): {nodes or 'none'}"


def device_option(f):
    """--device, for every command that trains, fits or descends through a network."""
    return click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                        help="Where the network runs: auto (a CUDA GPU where torch sees one, else the CPU), cpu, "
                             "or cuda (an error where there is no GPU).")(f)


def search_options(f):
    """The options `optimize` and `optimize-table` share: the baselines, the held-out limit, the seed,
    the Ray cluster their llvm-mca checks may run on and the device the surrogate runs on."""
    for option in reversed([
        click.option("--baseline", "baselines", multiple=True, type=click.Choice(["opentuner", "optuna", "none"]),
                     help="Surrogate-free searches on the same budget; repeatable [default: opentuner and optuna]."),
        click.option("--test-limit", type=click.IntRange(min=2), help="Evaluate on at most this many held-out blocks."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--ray", "ray_address", metavar="local|ADDRESS",
                     help="Run llvm-mca's checks on a Ray cluster's CPUs (ADDRESS: its head, or local)."),
        device_option,
    ]):
        f = option(f)
    return f


def source_options(f):
    """Where blocks come from, for `collect` and `measure`: BHive-format CSVs, binaries, assembly files,
    generated blocks."""
    for option in reversed([
        click.option("--bhive", multiple=True, type=click.Path(dir_okay=False), metavar="CSV",
                     help="BHive-format CSV (hex,throughput); repeatable. Its mcpu comes from the name (hsw.csv: haswell)."),
        click.option("--binary", multiple=True, type=click.Path(), metavar="PATH",
                     help="ELF binary or directory of them to cut into basic blocks; repeatable."),
        click.option("--asm", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
                     help="Text file of assembly blocks separated by blank lines; repeatable."),
        click.option("--per-binary", type=click.IntRange(min=1), metavar="N",
                     help="At most N blocks from each binary, spread evenly over its code [default: all; 200 when "
                          "no source is given]."),
        click.option("--exclude", multiple=True, metavar="GLOB",
                     help="Leave out binaries whose path matches (e.g. '*/libc.so*'): libraries held out of "
                          "training, to measure on later; repeatable."),
        click.option("--generate", type=click.IntRange(min=1), metavar="N",
                     help="Add N synthetic blocks with controlled dependency structure (chains, loop-carried "
                          "dependencies, pointer chases, long-latency instructions; see blocks/generate.py)."),
        click.option("--generate-seed", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Seed of the generated blocks (seeds from 9000 up are kept for held-out probes)."),
        click.option("--density", type=click.Choice(["mixed", "dense", "sparse", "unrolled", "loops", "forms", "vectors", "corners"]),
                     default="mixed", show_default=True,
                     help="How densely generated blocks reuse registers (dense: dependencies everywhere; unrolled: one to "
                          "three instruction forms repeated, as in an unrolled loop; loops: one to four instructions over "
                          "one to four registers, the loops people type first); forms: the breadth of the instruction set, drawn "
                          "over every form of LLVM's x86 target that llvm-mca takes; vectors: those forms held to vector instructions, over "
                          "few vector registers (SIMD kernels' chains); corners: small blocks around llvm-mca's "
                          "scheduling corner cases (zero idioms, move elimination, partial registers, load folding, "
                          "mulx/div, flags). With one --mcpu, the blocks use its whole instruction set."),
    ]):
        f = option(f)
    return f
