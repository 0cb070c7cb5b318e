"""The `surrogate-ops` command line: thin click commands over the library, one per pipeline stage.

Each command parses its options, calls one library function and prints; the MLflow store is
configured once, from --tracking-uri, before any command body runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import click

from surrogate_ops import config, presets, registry
from surrogate_ops.config import (
    AUTO_ENGINE,
    DEFAULT_MODEL,
    DEFAULT_MODEL_URI,
    DEVICES,
    ENGINE_CHOICES,
    EngineName,
    Source,
)
from surrogate_ops.errors import SurrogateOpsError

# Choices come from the preset tables (data), read without importing torch or TVM, so --help is quick.
ARCHITECTURES = [k for k in presets.load("model_sizes") if not k.startswith("_")]
SIZES = list(dict.fromkeys(s for k, v in presets.load("model_sizes").items() if not k.startswith("_") for s in v))
PLATFORMS = [k for k in presets.load("platforms") if not k.startswith("_")]


PARAMS_HELP = " Or learned:CPU, the learned per-instruction table that ships (learned:haswell)."


def _setting(spec: str | None, mcpus: tuple[str, ...] = ()):
    """--params as an `McaSetting`, checked against the llvm-mca of each of `mcpus` before any work starts."""
    if spec is None:
        return None
    from surrogate_ops.programs.setting import McaSetting

    return McaSetting.read(spec, mcpus)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--llvm-mca", "llvm_mca", metavar="PATH",
              help="llvm-mca to run (default: the one on PATH; also SURROGATE_OPS_LLVM_MCA).")
@click.version_option(package_name="surrogate-ops")
def cli(llvm_mca: str | None) -> None:
    """Neural surrogates of programs, starting with llvm-mca: collect labeled blocks, train,
    register, compile, serve, and fine-tune on measured throughput."""
    if llvm_mca:  # for this process and the ones it starts (labeling workers, the service)
        config.export(llvm_mca=llvm_mca)


@cli.command()
@click.option("--bhive", multiple=True, type=click.Path(dir_okay=False), metavar="CSV",
              help="BHive-format CSV (hex,throughput); repeatable. Its mcpu comes from the name (hsw.csv: haswell).")
@click.option("--binary", multiple=True, type=click.Path(), metavar="PATH",
              help="ELF binary or directory of them to cut into basic blocks; repeatable.")
@click.option("--asm", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="Text file of assembly blocks separated by blank lines; repeatable.")
@click.option("--per-binary", type=click.IntRange(min=1), metavar="N",
              help="At most N blocks from each binary, spread evenly over its code [default: all; 200 when "
                   "no source is given].")
@click.option("--exclude", multiple=True, metavar="GLOB",
              help="Leave out binaries whose path matches (e.g. '*/libc.so*'): libraries held out of "
                   "training, to measure on later; repeatable.")
@click.option("--generate", type=click.IntRange(min=1), metavar="N",
              help="Add N synthetic blocks with controlled dependency structure (chains, loop-carried "
                   "dependencies, pointer chases, long-latency instructions; see blocks/generate.py).")
@click.option("--generate-seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the generated blocks (seeds from 9000 up are kept for held-out probes).")
@click.option("--density", type=click.Choice(["mixed", "dense", "sparse", "unrolled", "loops", "forms", "vectors", "corners"]),
              default="mixed", show_default=True,
              help="How densely generated blocks reuse registers (dense: dependencies everywhere; unrolled: one to "
                   "three instruction forms repeated, as in an unrolled loop; loops: one to four instructions over "
                   "one to four registers, the loops people type first); forms: the breadth of the instruction set, drawn "
                   "over every form of LLVM's x86 target that llvm-mca takes; vectors: those forms held to vector instructions, over "
                   "few vector registers (SIMD kernels' chains); corners: small blocks around llvm-mca's "
                   "scheduling corner cases (zero idioms, move elimination, partial registers, load folding, "
                   "mulx/div, flags). With one --mcpu, the blocks use its whole instruction set.")
@click.option("--mcpu", multiple=True, default=("haswell",), show_default=True,
              help="llvm-mca -mcpu to label with; repeatable.")
@click.option("--limit", type=click.IntRange(min=0), help="Keep at most this many blocks (in source order; 0: all).")
@click.option("--workers", type=click.IntRange(min=1), help="llvm-mca processes in parallel [default: cores].")
@click.option("--ray", "ray_address", metavar="local|ADDRESS",
              help="Label on a Ray cluster's CPUs: ADDRESS is its head (host:port, or auto); local starts one "
                   "on this machine. Same labels as a local run; chunks on a lost node run again elsewhere.")
@click.option("--may-alias", type=click.Path(dir_okay=False), metavar="CSV",
              help="BHive may-alias list [default: may-alias.csv beside the --bhive file].")
@click.option("--params", metavar="JSON",
              help="llvm-mca parameters to label with (JSON: option name to value)." + PARAMS_HELP)
@click.option("--sample-params", type=click.IntRange(min=1), metavar="N",
              help="Label each block under one of N random llvm-mca parameter settings (for a "
                   "parameter-conditioned surrogate, see `optimize`).")
@click.option("--per-instruction", type=click.Choice(["centred", "wide"]),
              help="With --sample-params N: draw N per-instruction scheduling tables (latency, micro-ops, "
                   "port cycles per opcode) instead of global knobs, and label through the parametric "
                   "llvm-mca: centred (half the entries stock, the rest within 2x of it) or wide (DiffTune's "
                   "way: uniform over each value's range). For `optimize-table`.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --sample-params.")
@click.option("--spread", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="With --sample-params: how far from the defaults values are drawn, on each parameter's unit "
                   "scale (1: its whole range).")
@click.option("--split", "splits", multiple=True, type=click.Choice(["train", "val", "test"]),
              help="Keep only blocks of this split (by block hash); repeatable. --split train spends no "
                   "llvm-mca runs on blocks held out for evaluation.")
@click.option("--out", type=click.Path(dir_okay=False), help="Parquet file to write [default: <work dir>/datasets/default.parquet].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--part-rows", type=click.IntRange(min=1), default=2000, hidden=True,
              help="Blocks per resumable part file.")
def collect(bhive, binary, asm, per_binary, exclude, generate, generate_seed, density, mcpu, limit, workers, ray_address,
            may_alias, params, sample_params, per_instruction, seed, spread, splits, out, quiet, part_rows) -> None:
    """Build a labeled dataset: blocks from sources, labeled by llvm-mca, as Parquet.

    With no source, cuts basic blocks out of binaries found on this machine; --generate adds
    synthetic blocks, alone or beside the other sources. An interrupted run
    resumes where it stopped when run again with the same --out. With --sample-params N, each
    block is labeled under one of N random settings of llvm-mca's parameters (columns param_*);
    with --per-instruction as well, under one of N per-instruction tables (columns table,
    instructions).
    """
    from surrogate_ops import config
    from surrogate_ops.data import datasets

    out = Path(out) if out else config.work_dir() / "datasets" / "default.parquet"
    cluster = _join_cluster(ray_address)
    result = datasets.collect(out, bhive=bhive, binaries=binary, asm=asm, mcpus=mcpu, limit=limit or None, workers=workers,
                              cluster=cluster,
                              may_alias=may_alias, setting=_setting(params, tuple(mcpu)), progress=not quiet,
                              part_rows=part_rows, sample_params=sample_params or 0, seed=seed, splits=splits or None,
                              spread=spread, per_instruction=per_instruction, per_binary=per_binary, exclude=exclude,
                              generated=datasets.Generated(generate, generate_seed, density, mcpu[0] if len(mcpu) == 1 else None)
                              if generate else None)
    click.echo(f"wrote {result.path} ({result.rows:,} blocks"
               + (f", {result.resumed_rows:,} resumed from an earlier run" if result.resumed_rows else "") + ")")
    if result.rejected_path:
        click.echo(f"{result.rejected:,} blocks rejected, with reasons, in {result.rejected_path}")
    if cluster is not None:
        click.echo(_cluster_report(cluster))
    click.echo(datasets.summary(datasets.load(result.path)))
    if os.environ.get("MLFLOW_RUN_ID"):  # inside `mlflow run`: the dataset is the step's artifact, for the next step
        from surrogate_ops.registry import tracking

        click.echo(f"logged to run {tracking.log_dataset(result.path, result.rows)} as {tracking.DATASET}/{result.path.name}")


def _join_cluster(address: str | None):
    """The Ray cluster at `address` (--ray), or None to run on this machine's cores."""
    if address is None:
        return None
    from surrogate_ops.programs import cluster

    joined = cluster.connect(address)
    click.echo(f"llvm-mca on the Ray cluster at {address}: {joined.cpus} CPUs", err=True)
    return joined


def _cluster_report(cluster) -> str:
    nodes = ", ".join(f"{node[:8]} {count}" for node, count in cluster.nodes.most_common())
    return f"chunks answered by {len(cluster.nodes)} Ray node(s): {nodes or 'none'}"


@cli.command()
@click.argument("dataset", type=click.Path(dir_okay=False))
def summary(dataset: str) -> None:
    """Print a dataset's size, splits, sources and llvm-mca's error against measured throughput."""
    from surrogate_ops.data import datasets

    click.echo(datasets.summary(datasets.load(dataset)))


def _weights(items: tuple[str, ...]) -> dict[str, float]:
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


def _configure_tracking(ctx, param, value: str | None) -> str:
    from surrogate_ops.registry import tracking

    return tracking.configure(value)


def _tracking_option(f=None, *, lazy: bool = False):
    """--tracking-uri, configured as it is parsed (before the command body); the command gets the URI.
    lazy: left to the command, which configures MLflow only when it needs the registry."""
    option = click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", metavar="URI",
                          callback=None if lazy else _configure_tracking,
                          help="MLflow tracking store [default: SQLite in the work directory; also MLFLOW_TRACKING_URI].")
    return option(f) if f is not None else option


@cli.command()
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Dataset from `collect` (Parquet).")
@click.option("--arch", type=click.Choice(ARCHITECTURES), default="dep", show_default=True,
              help="dep: hier plus the block's def-use edges (chains, pointer chases); hier: fast (token pooling + "
                   "instruction attention); bert: the seed's; ithemal: hierarchical LSTM.")
@click.option("--preset", type=click.Choice(SIZES), default="small", show_default=True,
              help="Model size.")
@click.option("--size", "sizes", multiple=True, metavar="NAME=INT", help="Explicit size over the preset (e.g. dim=48).")
@click.option("--target", type=click.Choice(["mca", "measured"]), default="mca", show_default=True,
              help="mca: imitate llvm-mca; measured: fit measured throughput.")
@click.option("--mcpu", default="haswell", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--patience", type=click.IntRange(min=1), default=4, show_default=True, help="Early stopping, in epochs.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-minutes", type=float, help="Stop training after this long (the best epoch is kept; 0: no limit).")
@click.option("--train-limit", type=click.IntRange(min=0), help="Use at most this many training blocks (0: all).")
@click.option("--weight", "weights", multiple=True, metavar="SOURCE=FACTOR",
              help="Count training blocks whose source matches the glob this many times (e.g. "
                   "'generated:loops:*=3'; 0.5 keeps half); repeatable, the first match decides.")
@click.option("--threads", type=click.IntRange(min=1), help="torch threads [default: cores].")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="Where the network trains; auto: a CUDA GPU where torch sees one, else the CPU.")
@click.option("--init-from", metavar="URI",
              help=f"Start from this registered surrogate's weights and architecture (e.g. {DEFAULT_MODEL_URI}); "
                   "on data from `collect --sample-params` it becomes a parameter-conditioned surrogate.")
@click.option("--register", metavar="NAME", help="Register the model as a new version of NAME (alias challenger).")
@click.option("--resume", metavar="RUN_ID", help="Continue an interrupted run from its last checkpoint.")
@click.option("--save-dir", type=click.Path(file_okay=False), help="Also copy the model directory here.")
@_tracking_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(data, arch, preset, sizes, target, mcpu, epochs, batch_size, lr, patience, seed, max_minutes, train_limit,
          weights, threads, device, init_from, register, resume, save_dir, tracking_uri, quiet) -> None:
    """Train a surrogate, log the run to MLflow and optionally register it.

    Loss: mean absolute percentage error; early stopping on the validation split; figures on the
    test split. Checkpoints every epoch: an interrupted run continues with --resume RUN_ID. A
    dataset collected with --sample-params trains a parameter-conditioned surrogate (block and
    llvm-mca parameters in, cycles out), the model `optimize` descends through.
    """
    from surrogate_ops.models import size_options
    from surrogate_ops.training import train as training

    try:
        parsed = size_options(list(sizes))
    except SurrogateOpsError as exc:
        raise SurrogateOpsError(f"--size {exc}") from None
    parent = None
    if init_from:
        from surrogate_ops import registry

        parent = registry.open(init_from).model
        shape = parent.shape()
        arch, preset, parsed = shape["arch"], shape["preset"], shape["sizes"]
    config = training.TrainConfig(data=data, arch=arch, preset=preset, sizes=parsed, target=target, mcpu=mcpu,
                                  epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed,
                                  max_minutes=max_minutes, train_limit=train_limit or None, threads=threads,
                                  device=device, weights=_weights(weights))
    result = training.train(config, register=register, resume=resume, progress=not quiet,
                            init_from=parent, run_tags={"parent_uri": init_from} if init_from else None,
                            on_start=lambda run_id: click.echo(f"run {run_id} (if interrupted: --resume {run_id})"))
    if save_dir:
        shutil.copytree(result.model.path, save_dir, dirs_exist_ok=True)
        click.echo(f"model directory copied to {save_dir}")
    m = result.metrics
    click.echo(f"run {result.run_id}: {result.epochs_run} epochs in {result.seconds:.0f} s, best val MAPE "
               f"{100 * m['best_val_mape']:.2f}%")
    if "test_mape_vs_mca" in m:
        click.echo(f"test vs llvm-mca: MAPE {100 * m['test_mape_vs_mca']:.2f}%, tau {m['test_tau_vs_mca']:.4f}")
    if "test_mape_vs_measured" in m:
        click.echo(f"test vs measured: MAPE {100 * m['test_mape_vs_measured']:.2f}%, tau {m['test_tau_vs_measured']:.4f}")
    if result.registered:
        r = result.registered
        click.echo(f"registered {r.uri} ({_aliases(r)})")


@cli.command()
@click.option("--model", "model_uri", required=True,
              help="The surrogate to fit an error head to: models:/NAME@ALIAS, models:/NAME/VERSION or a directory.")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Dataset from `collect` with llvm-mca's labels on the model's CPU.")
@click.option("--split", type=click.Choice(["val", "test", "train", "all"]), default="val", show_default=True,
              help="Rows to fit on: blocks the surrogate never trained on (val), so its residuals are honest.")
@click.option("--mcpu", help="Whose labels [default: the model's].")
@click.option("--epochs", type=click.IntRange(min=1), default=60, show_default=True)
@click.option("--register", metavar="NAME", help="Register the confident surrogate as a new version of NAME.")
@click.option("--save-dir", type=click.Path(file_okay=False), help="Also copy the model directory here.")
@_tracking_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
def confidence(model_uri, data, split, mcpu, epochs, register, save_dir, tracking_uri, quiet) -> None:
    """Teach a surrogate to estimate its own error per block (an error head on its frozen network).

    The head is fit on the surrogate's relative errors against llvm-mca on blocks it never trained
    on, and scored on a fifth of them it was not fit on: how much of the error routing the least
    trusted 5/10/20% of blocks to llvm-mca removes. The result answers `estimated_error` in every
    answer, and honours `max_error` in the service and --max-error in `predict`."""
    from surrogate_ops.training import confidence as stage

    result = stage.calibrate(model_uri, data, mcpu=mcpu, split=split, epochs=epochs, register=register,
                             progress=not quiet)
    click.echo(f"error head {result.report}")
    if save_dir:
        shutil.copytree(result.model.path, save_dir, dirs_exist_ok=True)
        click.echo(f"model directory copied to {save_dir}")
    if result.registered:
        click.echo(f"registered {result.registered.uri} ({_aliases(result.registered)}); run {result.run_id}")


@cli.command()
@click.option("--model", "model_uri",
              help="models:/NAME@ALIAS, models:/NAME/VERSION, or a model directory [default: the champion "
                   "surrogate of --mcpu, else of haswell].")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="A dataset from `collect`, or a BHive-format CSV (hex,throughput; labeled by llvm-mca once, "
                   "as `finetune` reads it).")
@click.option("--split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True)
@click.option("--mcpu", help="Microarchitecture to compare on [default: the model's].")
@click.option("--engine", type=click.Choice([EngineName.ONNXRUNTIME.value, EngineName.TORCH.value]),
              default=EngineName.ONNXRUNTIME.value, show_default=True)
@_tracking_option
def evaluate(model_uri, data, split, mcpu, engine, tracking_uri) -> None:
    """Print MAPE and Kendall's tau of a model against llvm-mca and measured throughput.

    The figures also go on an MLflow run of the evaluation's own (metrics, the dataset's digest,
    plots/predicted_vs_mca.png in cycles per 100 iterations)."""
    from surrogate_ops import config
    from surrogate_ops.registry.evaluate import evaluation_run

    model_uri = model_uri or config.model_uri(mcpu or config.DEFAULT_MCPU)
    done = evaluation_run(model_uri, data, split, mcpu, engine)
    click.echo(f"{model_uri} on the {split} split of {data}:")
    for line in done.evaluation.lines():
        click.echo("  " + line)
    click.echo(f"  logged to run {done.run_id}")


@cli.command()
@click.option("--binary", multiple=True, type=click.Path(exists=True), metavar="PATH",
              help="ELF binary or directory of them to cut into basic blocks; repeatable.")
@click.option("--asm", multiple=True, type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="Text file of assembly blocks separated by blank lines; repeatable.")
@click.option("--mcpu", multiple=True, metavar="CPU",
              help="CPU to cover; repeatable [default: the model's, else every CPU a surrogate is bundled for].")
@click.option("--model", "model_uri",
              help="models:/NAME@ALIAS, models:/NAME/VERSION, or a model directory [default: the champion "
                   "surrogate of each CPU, as `predict` uses].")
@click.option("--limit", type=click.IntRange(min=0), default=5000, show_default=True,
              help="At most this many blocks from each binary (spread over its code) and assembly file (0: all).")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write a CSV of every block's answer per CPU.")
@click.option("--no-log", is_flag=True, help="Log nothing to MLflow.")
@_tracking_option(lazy=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def coverage(binary, asm, mcpu, model_uri, limit, out, no_log, tracking_uri, quiet) -> None:
    """How much of your own code the surrogate of each CPU answers itself.

    The blocks of --binary and --asm are answered, per CPU, under the fallback policy `predict` and
    the service follow; a block the surrogate is not trusted on goes to llvm-mca, and the rules that
    sent them are counted (with the unknown tokens themselves). llvm-mca also runs on every block,
    so the surrogate's own answers are scored against it (MAPE, Kendall's tau), never llvm-mca's
    answers behind its back. The figures also go on an MLflow run of their own (metrics per CPU:
    <cpu>_answered_share, <cpu>_mape_vs_mca, ...; artifacts coverage.csv and reasons.json)."""
    from surrogate_ops import registry
    from surrogate_ops.serving import coverage as stage

    if not binary and not asm:
        raise click.UsageError("give the code to cover: --binary PATH or --asm FILE")
    if model_uri:  # one surrogate: its CPU (another is refused, naming the one it imitates)
        model = registry.open(model_uri, tracking_uri=tracking_uri, pinned=True).model
        surrogates = {m: model for m in mcpu or [model.mcpu]}
    else:
        surrogates = {m: registry.open(None, m, tracking_uri, pinned=True).model for m in mcpu or stage.bundled_mcpus()}
    if not no_log:  # after the surrogates are found: a store that is not there yet needs no registration for them
        from surrogate_ops.registry import tracking

        tracking.configure(tracking_uri)
    report = stage.coverage_run(binary, asm, surrogates, limit=limit or None, out=out, log=not no_log,
                                progress=not quiet)
    for line in report.lines():
        click.echo(line)
    if out:
        click.echo(f"per-block answers written to {out}")
    if report.run_id:
        click.echo(f"logged to run {report.run_id}")


@cli.command()
@click.argument("name")
@click.option("--data", type=click.Path(dir_okay=False),
              help="Held-out data: a dataset from `collect` or a BHive-format CSV [default: the challenger's dataset].")
@click.option("--force", is_flag=True,
              help="Move champion to the challenger even when it is rejected (worse, or lacking what the "
                   "champion serves); the figures are still taken and recorded.")
@click.option("--check", is_flag=True, help="Only decide: exit 0 or 1, move no alias, record nothing on the version.")
@_tracking_option
def promote(name, data, force, check, tracking_uri) -> None:
    """Evaluate challenger and champion of NAME on the same held-out blocks; move champion to the
    challenger when it is no worse in error and serves what the champion serves (mcpu, target, an
    error head, llvm-mca parameters). The figures go on an MLflow run (metrics, plots/comparison.png),
    the decision on the challenger's version (description and tags).

    Exit status: 0 promoted (or already champion), 1 rejected (--check: would be), 2 an error."""
    from surrogate_ops.registry import promotion

    decision = promotion.promote(name, data, force=force, check=check)
    click.echo(str(decision))
    click.echo(f"logged to run {decision.run_id}")
    if not decision.promoted:
        sys.exit(promotion.EXIT_REJECTED)


@cli.command()
@click.option("--model", "model_uri",
              help="models:/NAME@ALIAS, models:/NAME/VERSION, or a model directory [default: the champion "
                   "surrogate of --mcpu, models:/llvm-mca-<mcpu>@champion].")
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Assembly blocks separated by blank lines, or a CSV with a block or hex column.")
@click.option("--mcpu", default="haswell", show_default=True)
@click.option("--program", type=click.Choice(["llvm-mca"]), help="Answer with the real program instead of the surrogate.")
@click.option("--params", metavar="JSON",
              help="llvm-mca parameters: for --program llvm-mca, or the setting a parameter-conditioned surrogate "
                   "predicts." + PARAMS_HELP)
@click.option("--engine", type=click.Choice(ENGINE_CHOICES), default=AUTO_ENGINE, show_default=True,
              help="Surrogate engine; auto: the TVM build (this CPU's, or the CUDA one where a GPU is) when it "
                   "was measured faster here, else ONNX Runtime.")
@click.option("--no-fallback", is_flag=True,
              help="Never run llvm-mca: a block the surrogate is not trusted on gets an error naming why.")
@click.option("--max-error", type=click.FloatRange(min=0), metavar="FRACTION",
              help="Send llvm-mca the blocks whose estimated relative error is above this (0.05: 5%); "
                   "needs a surrogate with an error head (the bundled ones have one; see `confidence`).")
@_tracking_option(lazy=True)
def predict(model_uri, input_path, mcpu, program, params, engine, no_fallback, max_error, tracking_uri) -> None:
    """Print `index,cycles,source,reason,estimated_error` (cycles per 100 iterations) for every block of
    a file, under the service's fallback policy: the surrogate of --mcpu answers (each CPU has its own
    registered surrogate), llvm-mca where the surrogate is not trusted (tokens outside its vocabulary,
    more instructions than its limit, an estimated error over --max-error), with the reason; with
    --program llvm-mca, llvm-mca answers all. `estimated_error` is the surrogate's own estimate of its
    relative error on the block (a median: half the blocks it gives 0.02 are off by less than 2%).
    An unreadable block gets source `error` and the reason (also on stderr); there is never a `nan`.
    The file is read and answered in chunks, in order, so files of millions of blocks run in bounded
    memory; a local model directory, or a default already resolved and cached, starts without
    touching MLflow."""
    import csv
    import itertools

    from surrogate_ops import config
    from surrogate_ops.blocks.inputs import chunks
    from surrogate_ops.serving.policy import Limits
    from surrogate_ops.serving.server import Server

    setting = _setting(params, (mcpu,))
    reading = chunks(input_path)
    first = next(reading)  # a file that is not text or holds no block is refused here, before any work or output
    # a file is not a request: no block is refused for its length, and a call may hold a core longer
    limits = Limits(max_instructions=1 << 30, mca_chunk=256, mca_chunk_instructions=4096)
    if program:
        server = Server(None, limits=limits)
        exact = True
    else:
        from surrogate_ops import registry
        from surrogate_ops.runtime.inference import Predictor

        predictor = Predictor(registry.open(model_uri, mcpu, tracking_uri, pinned=True).model, engine=engine)
        if predictor.meta.get("mcpu") != mcpu:
            raise SurrogateOpsError(f"{model_uri or config.model_uri(mcpu)} imitates -mcpu={predictor.meta.get('mcpu')}, "
                                    f"not {mcpu}")
        server, exact = Server(predictor, limits=limits), False
        server.check_max_error(mcpu, max_error)
    out = csv.writer(click.get_text_stream("stdout"), lineterminator="\n")
    out.writerow(["index", "cycles", "source", "reason", "estimated_error"])
    answered, sources = 0, dict.fromkeys(Source, 0)
    for chunk in itertools.chain([first], reading):  # a chunk at a time: memory stays bounded on files of millions of blocks
        answers = server.answer(chunk.blocks, mcpu, exact=exact, first=chunk.start, fallback=not no_fallback,
                                setting=setting, max_error=max_error) if chunk.blocks else []
        for i, answer in enumerate(answers):
            index = chunk.start + i
            if i in chunk.unreadable:
                answer = {"error": chunk.unreadable[i]}
            if "error" in answer:
                error = _name_block(index, answer["error"])
                out.writerow([index, "", Source.ERROR, error, ""])
                click.echo(error, err=True)
                sources[Source.ERROR] += 1
            else:
                out.writerow([index, f"{answer['cycles']:g}", answer["source"],
                              "" if program else answer.get("reason", ""), answer.get("estimated_error", "")])
                sources[answer["source"]] += 1
        answered += len(answers)
    if sources[Source.LLVM_MCA] and not program or sources[Source.ERROR]:
        click.echo(f"{answered:,} blocks: " + ", ".join(f"{n:,} {source}" for source, n in sources.items() if n), err=True)


def _aliases(registered) -> str:
    if registered.aliases:
        return f"aliases: {', '.join(registered.aliases)}"
    return "no alias: a newer version, registered beside this one, is challenger"


def _name_block(index: int, error: str) -> str:
    """The error named once, by the block's place in the file (a reason may name its place in a chunk)."""
    named = re.match(r"block \d+(?:, (line \d+))?: ", error)
    where = f"block {index}" + (f", {named.group(1)}" if named and named.group(1) else "")
    return f"{where}: {error[named.end():] if named else error}"


def _shape_option(ctx, param, value: str) -> tuple[int, int, int]:
    """BATCHxINSTRUCTIONSxTOKENS, checked before any work starts."""
    parts = value.lower().split("x")
    if len(parts) != 3 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise click.BadParameter(f"{value!r} is not BATCHxINSTRUCTIONSxTOKENS (positive integers)")
    return tuple(int(part) for part in parts)


@cli.command("compile")
@click.option("--model", "model_uri", default=DEFAULT_MODEL_URI, show_default=True,
              help="models:/NAME@ALIAS or models:/NAME/VERSION.")
@click.option("--platform", "--target", "platform", type=click.Choice(PLATFORMS), default="x86", show_default=True,
              help="Where the build runs. x86: this host's CPU; arm64: aarch64 Linux (cross-built); cuda: NVIDIA GPUs.")
@click.option("--verify", is_flag=True,
              help="Also run a foreign build here and fail unless it agrees with ONNX Runtime: arm64 under QEMU's "
                   "user-mode emulation with an aarch64 TVM runtime (max rel diff <= 1e-4). The emulated machine is "
                   "made once in the work directory (needs qemu-user-static and mmdebstrap). Builds for this host "
                   "are always checked.")
@click.option("--tvm-cpu", help="The CPU TVM generates code for (x86/arm64) [default: this host's, detected, for x86].")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Directory for <platform>.so and <platform>.json.")
@click.option("--tune-minutes", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Also tune a static-shape build with TVM's meta-schedule for about this long (host platform "
                   "only); it is used where it beats the untuned build and ONNX Runtime.")
@click.option("--tune-shape", default="256x16x16", show_default=True, callback=_shape_option,
              help="BATCHxINSTRUCTIONSxTOKENS of the tuned build; longer batches use the untuned build.")
@click.option("--tune-kernels", type=click.IntRange(min=1), default=4, show_default=True,
              help="How many of the heaviest kernels (by FLOPs) to tune.")
@_tracking_option
def compile_command(model_uri, platform, tvm_cpu, out, verify, tune_minutes, tune_shape, tune_kernels,
                     tracking_uri) -> None:
    """Compile a registered surrogate with Apache TVM for a platform; log the build to the model
    version's run and tag the version, so users and the service can pick a build for their hardware.

    The build keeps batch, instruction and token axes dynamic. With --tune-minutes, TVM's
    meta-schedule also tunes the heaviest kernels of a static-shape build on this CPU, and the
    record says what was tuned and whether it paid (tuned vs untuned vs ONNX Runtime)."""
    from surrogate_ops import registry
    from surrogate_ops.builds import compile as compiler
    from surrogate_ops.builds.export import check_onnx, example_batch, onnx_opset
    from surrogate_ops.registry import versions
    from surrogate_ops.runtime import engines
    from surrogate_ops.runtime.modeldir import Builds

    opened = registry.open(model_uri, registered=True)
    model, name, version = opened.model, opened.name, opened.version
    blocks = compiler.check_blocks(versions.version_tags(name, version).get("dataset_path"))
    click.echo(f"ONNX (opset {onnx_opset(model)}, dynamic batch/instructions/tokens): {check_onnx(model, blocks)}")
    build = compiler.compile_model(model, platform, Path(out), tvm_cpu, example_batch(model.tokenizer(), blocks),
                                   tune_minutes=tune_minutes, tune_shape=tune_shape, tune_kernels=tune_kernels,
                                   verify=verify, log=click.echo)
    folder = Builds(Path(out))
    versions.attach_build(name, version, platform, folder.files(platform), folder.database(platform), build.tags())
    if platform == engines.HOST_PLATFORM:  # the local copy of the version picks its host build up at once
        compiler.install(Path(out), platform, model)
    click.echo(f"built {build.library} for {platform} ({build.tvm_target}) in {build.seconds:.1f} s")
    if build.tuning:
        click.echo(build.tuned)
    if build.verified:
        click.echo(f"verified: {build.verified}: max abs diff {build.max_abs_diff:.3g}, max rel diff "
                   f"{build.max_rel_diff:.3g}; {build.emulated_blocks_per_s:,.0f} blocks/s emulated (for the record only)")
    elif build.max_rel_diff is not None:
        click.echo(f"TVM vs ONNX Runtime on {len(blocks)} real blocks: max abs diff {build.max_abs_diff:.3g}, "
                   f"max rel diff {build.max_rel_diff:.3g}; {build.blocks_per_s:,.0f} blocks/s (ONNX Runtime "
                   f"{build.onnxruntime_blocks_per_s:,.0f} blocks/s, network only)")
    elif not build.runs_here:
        click.echo(f"not run here: the {platform} build loads only on {engines.platforms()[platform]['runs_on']}"
                   + (" (--verify runs it under emulation)" if "emulate" in engines.platforms()[platform] else ""))
    click.echo(f"logged to run {versions.run_of(name, version)} under builds/{platform}; tagged on {name} v{version}")


@cli.command()
@click.option("--from", "parent_uri", default=DEFAULT_MODEL_URI, show_default=True,
              help="The registered surrogate to start from (models:/NAME@ALIAS or models:/NAME/VERSION).")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Measured throughputs: a BHive-format CSV (hex,throughput; collected once, may-alias.csv "
                   "beside it honoured) or a dataset from `collect`.")
@click.option("--target", type=click.Choice(["measured"]), default="measured", show_default=True)
@click.option("--mcpu", help="Microarchitecture of the measurements [default: the parent's].")
@click.option("--register", metavar="NAME", help="Model name for the result [default: <parent>-<data>-measured].")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--lr", type=float, default=5e-4, show_default=True)
@click.option("--train-limit", type=click.IntRange(min=0), help="Use at most this many training blocks (0: all).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-minutes", type=float, help="Stop after this long (the best epoch is kept; 0: no limit).")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="Where the network trains; auto: a CUDA GPU where torch sees one, else the CPU.")
@_tracking_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def finetune(parent_uri, data, target, mcpu, register, epochs, lr, train_limit, seed, max_minutes, device,
             tracking_uri, quiet) -> None:
    """Fine-tune a registered llvm-mca surrogate on measured throughputs (surrogate adaptation).

    The vocabulary grows for unseen tokens (learned ones keep their ids and weights); training
    uses MAPE loss with early stopping on the validation split; the run is tagged with its parent
    version, and the result is registered as a challenger of a model named for the task."""
    from surrogate_ops.training import adaptation

    name = registry.open(parent_uri, registered=True).name
    register = register or adaptation.default_name(name, Path(data), target)
    result = adaptation.finetune(parent_uri, data, target=target, register=register, mcpu=mcpu, epochs=epochs, lr=lr,
                                 train_limit=train_limit or None, seed=seed, max_minutes=max_minutes or None,
                                 progress=not quiet, device=device)
    m = result.metrics
    click.echo(f"fine-tuned {parent_uri} in {result.seconds:.0f} s ({result.epochs_run} epochs): "
               f"{100 * m['test_mape_vs_measured']:.2f}% MAPE vs measured (tau {m['test_tau_vs_measured']:.3f}); "
               f"llvm-mca {100 * m['test_mca_mape_vs_measured']:.2f}% on the same {int(m['test_measured_blocks'])} "
               "test blocks")
    if result.registered:
        click.echo(f"registered {result.registered.name} v{result.registered.version} "
                   f"({_aliases(result.registered)}); run {result.run_id}")


@cli.command()
@click.option("--model", "model_uri", required=True, metavar="URI",
              help="A parameter-conditioned surrogate (trained on `collect --sample-params` data): "
                   "models:/NAME@ALIAS, models:/NAME/VERSION or a model directory.")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Measured throughputs: BHive-format CSV (may-alias.csv beside it honoured) or a dataset.")
@click.option("--budget", required=True, type=click.IntRange(min=1), metavar="K",
              help="llvm-mca block evaluations per method, the surrogate's training data included.")
@click.option("--mcpu", help="Microarchitecture of the measurements [default: the model's].")
@click.option("--baseline", "baselines", multiple=True, type=click.Choice(["opentuner", "optuna", "none"]),
              help="Surrogate-free search baselines to run with the same budget; repeatable [default: opentuner and optuna].")
@click.option("--search-blocks", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Training blocks each llvm-mca run of the search takes: a baseline's trial (trials = budget / "
                   "this), the surrogate's anchors and each of its checks.")
@click.option("--verify", type=click.IntRange(min=0), default=4, show_default=True,
              help="The surrogate's best candidates to check with llvm-mca (charged to its budget); 0 trusts its choice.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Spread the checks over this many descents, fine-tuning the surrogate on llvm-mca's answers between.")
@click.option("--no-anchor", is_flag=True,
              help="Descend on the surrogate's own predictions, not on its change to llvm-mca's default answers.")
@click.option("--steps", type=click.IntRange(min=1), default=100, show_default=True, help="Descent steps per round.")
@click.option("--restarts", type=click.IntRange(min=0), default=8, show_default=True,
              help="Random starts beside the expert defaults.")
@click.option("--lr", type=float, default=0.1, show_default=True, help="Adam step on the relaxed parameters.")
@click.option("--test-limit", type=click.IntRange(min=2), help="Evaluate on at most this many held-out blocks.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), metavar="JSON",
              help="Write the surrogate-found parameters here (llvm-mca option names to values).")
@click.option("--ray", "ray_address", metavar="local|ADDRESS",
              help="Run llvm-mca's checks on a Ray cluster's CPUs (ADDRESS: its head, or local).")
@_tracking_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def optimize(model_uri, data, budget, mcpu, baselines, search_blocks, verify, rounds, no_anchor, steps, restarts, lr,
             test_limit, seed, out, ray_address, tracking_uri, quiet) -> None:
    """Tune llvm-mca's parameters by gradient descent through a surrogate (surrogate optimization).

    Descends on the relaxed parameters against measured throughput on the training split, rounds
    to valid values, and runs the real llvm-mca with the expert defaults, the surrogate's setting
    and each baseline's (same budget, space and objective) on the held-out split. Everything
    goes to one MLflow run; the found parameters work with `predict --program llvm-mca --params`.
    """
    from surrogate_ops.search import optimize as optimization

    chosen = () if "none" in baselines else tuple(baselines) or optimization.BASELINES
    config = optimization.OptimizeConfig(model=model_uri, data=data, budget=budget, mcpu=mcpu, baselines=chosen,
                                         steps=steps, lr=lr, restarts=restarts, search_blocks=search_blocks,
                                         verify=verify, rounds=rounds, anchored=not no_anchor, test_limit=test_limit,
                                         seed=seed)
    result = optimization.optimize(config, out=out, progress=not quiet, cluster=_join_cluster(ray_address))
    click.echo(f"held-out llvm-mca error ({result.test_blocks:,} measured blocks, may-alias excluded; "
               f"budget {budget:,} llvm-mca block evaluations):")
    for o in result.outcomes.values():
        changed = {k: v for k, v in o.setting.items() if v != result.outcomes["defaults"].setting.get(k)}
        click.echo(f"  {o.method:<10} MAPE {100 * o.test_mape:6.2f}%  tau {o.test_tau:.4f}  "
                   f"evaluations {o.evaluations:>7,}  " + (", ".join(f"{k}={v}" for k, v in changed.items()) or "defaults"))
    if out:
        click.echo(f"surrogate-found parameters written to {out}")
    click.echo(f"MLflow run {result.run_id}")


@cli.command("optimize-table")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Measured throughputs: BHive-format CSV (may-alias.csv beside it honoured) or a dataset.")
@click.option("--labels", required=True, multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="Blocks labeled under sampled tables (`collect --sample-params N --per-instruction centred`, "
                   "best with --split train); repeatable.")
@click.option("--mcpu", default="haswell", show_default=True, help="Microarchitecture of the measurements.")
@click.option("--model", "model_uri", metavar="URI",
              help="The surrogate to start from [default: the bundled one for --mcpu].")
@click.option("--min-count", type=click.IntRange(min=1), default=20, show_default=True,
              help="Opcodes used fewer times in the training blocks keep their stock entries.")
@click.option("--epochs", type=click.IntRange(min=1), default=12, show_default=True, help="Surrogate fine-tuning epochs.")
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True, help="Descent steps.")
@click.option("--lr", type=float, default=0.05, show_default=True, help="Adam step on the relaxed table.")
@click.option("--verify", type=click.IntRange(min=1), default=6, show_default=True,
              help="Rounded tables from along the descent checked with the real driver (charged to the surrogate).")
@click.option("--restarts", type=click.IntRange(min=1), default=1, show_default=True,
              help="Descents, each on its own minibatch order, --verify tables of each checked (at a small "
                   "--steps the order decides whether any table beats the stock one).")
@click.option("--search-blocks", type=click.IntRange(min=10), default=2000, show_default=True,
              help="Training blocks each check and each baseline trial runs (trials = the surrogate's budget / this).")
@click.option("--baseline", "baselines", multiple=True, type=click.Choice(["opentuner", "optuna", "none"]),
              help="Surrogate-free searches on the same budget; repeatable [default: opentuner and optuna].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--test-limit", type=click.IntRange(min=2), help="Evaluate on at most this many held-out blocks.")
@click.option("--out", type=click.Path(dir_okay=False), metavar="JSON",
              help="Write the surrogate's table here, as --params takes it.")
@click.option("--no-register", is_flag=True, help="Log the run but register no version of llvm-mca-<mcpu>-table.")
@click.option("--ray", "ray_address", metavar="local|ADDRESS",
              help="Run llvm-mca's checks on a Ray cluster's CPUs (ADDRESS: its head, or local).")
@_tracking_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def optimize_table(data, labels, mcpu, model_uri, min_count, epochs, steps, lr, verify, restarts, search_blocks, baselines, seed,
                   test_limit, out, no_register, ray_address, tracking_uri, quiet) -> None:
    """Tune llvm-mca's per-instruction scheduling table (each opcode's latency, micro-ops and port
    cycles: DiffTune's space) by gradient descent through a per-instruction surrogate.

    Fine-tunes the CPU's surrogate on the --labels, descends on the relaxed table against the
    measured training blocks, checks rounded tables with the parametric llvm-mca, runs OpenTuner
    and Optuna on the same budget of driver evaluations, and scores every table on the held-out
    split. One MLflow run holds the figures, every table, diff.csv and the plots; the surrogate's
    table is registered as a version of llvm-mca-<mcpu>-table.
    """
    from surrogate_ops.search import table_search

    chosen = () if "none" in baselines else tuple(baselines) or table_search.BASELINES
    config = table_search.TableSearchConfig(data=data, labels=tuple(labels), mcpu=mcpu, model=model_uri,
                                            min_count=min_count, epochs=epochs, steps=steps, descent_lr=lr,
                                            verify=verify, restarts=restarts, search_blocks=search_blocks,
                                            baselines=chosen, seed=seed, test_limit=test_limit)
    result = table_search.search(config, progress=not quiet, register=not no_register,
                                 cluster=_join_cluster(ray_address))
    click.echo(f"space: {len(result.space.opcodes)} opcodes, {result.space.size} values; held-out llvm-mca error on "
               f"{result.test_blocks:,} measured blocks, may-alias excluded ({result.rare_blocks:,} of them with an "
               f"opcode rare in training):")
    for o in result.outcomes.values():
        click.echo(f"  {o.method:<10} MAPE {100 * o.test_mape:6.2f}%  tau {o.test_tau:.4f}  rare-opcode blocks "
                   f"{100 * result.rare[o.method]:6.2f}%  evaluations {o.evaluations:>8,}  entries changed {len(o.setting)}")
    if out:
        Path(out).write_text(json.dumps(result.table_file, indent=1) + "\n")
        click.echo(f"the surrogate's table written to {out} (use it as --params {out})")
    if result.version:
        click.echo(f"registered llvm-mca-{mcpu}-table v{result.version}")
    click.echo(f"MLflow run {result.run_id}")


@cli.command("table-diff")
@click.argument("table", metavar="TABLE")
@click.option("--plot", type=click.Path(dir_okay=False), metavar="PNG", help="Draw the changes here.")
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False), metavar="CSV", help="Write the changes here.")
def table_diff(table, plot, csv_out) -> None:
    """What a learned per-instruction table changes from llvm-mca's stock one: every opcode, value,
    stock and learned (TABLE: learned:haswell, or a table file from `optimize-table --out` or an
    optimize-table run's table.json)."""
    import pandas as pd

    from surrogate_ops import plots
    from surrogate_ops.programs import tables
    from surrogate_ops.programs.setting import LEARNED

    if table.startswith(LEARNED):
        data = tables.learned_file(table[len(LEARNED):])
    else:
        try:
            data = json.loads(Path(table).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SurrogateOpsError(f"{table}: {exc}") from None
    if "_stock" not in data or "per_instruction" not in data:
        raise SurrogateOpsError(f"{table}: not a learned table file (it needs per_instruction and the stock entries "
                                "under _stock, as optimize-table writes them)")
    changes = pd.DataFrame(tables.diff_entries(data["_stock"], data["per_instruction"]),
                           columns=["opcode", "column", "stock", "learned"])
    held = data.get("_held_out", {})
    click.echo(f"{len(data['per_instruction'])} opcodes changed, {len(changes)} values (-mcpu={data.get('_mcpu', '?')})"
               + (f"; held-out MAPE {100 * held['test_mape']:.2f}%" if "test_mape" in held else ""))
    if not changes.empty:
        changes["change"] = changes["learned"] - changes["stock"].fillna(0)
        ordered = changes.assign(size=changes["change"].abs()).sort_values(["size", "opcode"], ascending=[False, True])
        click.echo(ordered.drop(columns="size").to_string(index=False))
    if csv_out:
        changes.to_csv(csv_out, index=False)
    if plot:
        plots.table_diff(changes, Path(plot), f"{table}: learned vs stock (-mcpu={data.get('_mcpu', '?')})")
        click.echo(f"plot: {plot}")


@cli.group()
def study() -> None:
    """The seed paper's studies, each as one command (every run logged to MLflow)."""


@study.command("adaptation")
@click.option("--from", "parent_uri", default=DEFAULT_MODEL_URI, show_default=True)
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Measured throughputs (BHive-format CSV or a collected dataset).")
@click.option("--mcpu", help="Microarchitecture of the measurements [default: the parent's].")
@click.option("--sizes", help="Training-set sizes, comma-separated [default: 6 log-spaced from 100 to all].")
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=1500, show_default=True,
              help="Optimizer steps per run, the same for both methods.")
@click.option("--val-limit", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="adaptation", show_default=True,
              help="Folder for adaptation.csv/.md/.png and the per-run table.")
@click.option("--small", type=click.BOOL, is_flag=False, flag_value=True, default=False,
              help="A small, fast configuration (sizes 100,300; one seed; 150 steps); also --small true|false.")
@_tracking_option
def adaptation_command(parent_uri, data, mcpu, sizes, seeds, steps, val_limit, out, small, tracking_uri) -> None:
    """From scratch vs fine-tuned from the surrogate, over training-set sizes and seeds, scored on
    the same held-out measured blocks (may-alias excluded) with llvm-mca's error as the reference."""
    from surrogate_ops.training import adaptation

    try:
        sizes = [int(x) for x in sizes.split(",")] if sizes else None
        seeds = [int(x) for x in seeds.split(",")]
    except ValueError:
        raise click.BadParameter("sizes and seeds are comma-separated integers") from None
    if small:
        sizes, seeds, steps, val_limit = sizes or [100, 300], [0], 150, 300
    adaptation.study(parent_uri, data, Path(out), sizes=sizes, seeds=seeds, steps=steps, val_limit=val_limit, mcpu=mcpu)
    click.echo((Path(out) / "adaptation.md").read_text())
    click.echo(f"plot: {Path(out) / 'adaptation.png'}; also logged to MLflow")


@study.command("capacity")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="A collected dataset (surrogate-ops collect): every size trains on it, and is scored and "
                   "timed on its test split.")
@click.option("--sizes", default=None, metavar="ARCH:PRESET[:NAME=N...],...",
              help="Networks to compare, comma-separated, e.g. dep:tiny:dim=16:layers=1 [default: four dep "
                   "sizes from dim 16 and one layer to small].")
@click.option("--mcpu", default="haswell", show_default=True, help="Whose llvm-mca cycles the sizes learn.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--train-limit", type=click.IntRange(min=0), default=0, help="Train on at most this many blocks [default, 0: all].")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Timing runs per size (median).")
@click.option("--out", type=click.Path(file_okay=False), default="capacity", show_default=True,
              help="Folder for capacity.csv/.md/.png.")
@click.option("--small", type=click.BOOL, is_flag=False, flag_value=True, default=False,
              help="A fast sweep: two sizes, 2 epochs, 2,000 training blocks, one timing run; also --small true|false.")
@_tracking_option
def capacity_command(data, sizes, mcpu, epochs, train_limit, repeats, out, small, tracking_uri) -> None:
    """Accuracy against speed over network sizes: each trained on the same data, scored against
    llvm-mca on the same test split and timed on its blocks (the network alone, and the whole path
    from text), with the Pareto front drawn; every size a nested MLflow run."""
    from surrogate_ops.training import capacity

    if small:
        sizes, epochs, train_limit, repeats = sizes or "dep:tiny:dim=16:layers=1,dep:tiny", 2, train_limit or 2000, 1
    table = capacity.study(data, Path(out), capacity.parse_sizes(sizes or capacity.DEFAULT_SIZES), mcpu=mcpu,
                           epochs=epochs, train_limit=train_limit or None, repeats=repeats)
    click.echo((Path(out) / "capacity.md").read_text())
    click.echo(f"plot: {Path(out) / 'capacity.png'}; {len(table)} sizes, also logged to MLflow")


@cli.command()
@click.option("--model", "model_uris", multiple=True,
              help="models:/NAME@ALIAS, models:/NAME/VERSION or a model directory; repeatable, one per mcpu "
                   "[default: the champion of every bundled CPU's surrogate].")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=3000, show_default=True)
@click.option("--params", metavar="JSON",
              help="llvm-mca parameters for the fallback on the model's mcpu (e.g. from `optimize --out`)." + PARAMS_HELP)
@_tracking_option
def serve(model_uris, host, port, params, tracking_uri) -> None:
    """Serve the surrogate over HTTP with BentoML (`bentoml serve bento/service.py`).

    POST /predict {"blocks": [...], "mcpu": "haswell", "exact": false} answers one result per block:
    the cycles of the surrogate of that mcpu, or llvm-mca's where the surrogate is not trusted (tokens
    outside its vocabulary, longer than its limit, no surrogate for the mcpu) or exact is asked. GET /ops/healthz says which
    model and mode; GET /docs is the OpenAPI page."""
    from surrogate_ops import registry
    from surrogate_ops.serving import bento

    model_uris = registry.served(model_uris)
    for k, model_uri in enumerate(model_uris):
        if model_uri.startswith("models:/"):
            registry.open(model_uri)  # a wrong name fails here, clearly, before the server starts
        else:  # a directory, as the server (which runs in its own folder) will find it; a missing
            # one leaves the service up on llvm-mca alone, saying why, as a model that fails to load does
            model_uris[k] = str(Path(model_uri).resolve())
    model_uri = ",".join(model_uris)
    env = {**config.child_environ(model=model_uri), "MLFLOW_TRACKING_URI": tracking_uri}
    if "BENTOML_HOME" not in env:  # BentoML keeps its Prometheus files there: one home per port, or servers mix them
        env["BENTOML_HOME"] = str(config.work_dir() / "bentoml" / f"serve-{port}")
    if params:
        _setting(params)  # a wrong name or value fails here, before the server starts
        # the service reads it as given (a file by its whole path: the service runs in its own folder)
        spec = params if params.startswith("learned:") else str(Path(params).resolve())
        env = config.child_environ(env, mca_params=spec)
    command = [sys.executable, "-m", "bentoml", "serve", "service:Surrogate", "--working-dir", str(bento.service_dir()),
               "--host", host, "--port", str(port)]
    click.echo(f"serving {model_uri} on http://{host}:{port} (POST /predict, GET /ops/healthz, /docs)")
    os.execvpe(command[0], command, env)


@cli.command()
@click.option("--model", "model_uris", multiple=True,
              help="models:/NAME@ALIAS or models:/NAME/VERSION: a model the bento carries; repeatable, one per "
                   "mcpu [default: the champion of every bundled CPU's surrogate].")
@click.option("--params", metavar="JSON",
              help="llvm-mca parameters the bento's fallback uses (e.g. from `optimize --out`)." + PARAMS_HELP)
@_tracking_option
def bento(model_uris, params, tracking_uri) -> None:
    """Build a bento, offline: bento/service.py and bentofile.yaml with the model (and its TVM build
    for this host, if any) and the package's source, staged in a scratch folder, then `bentoml build`.
    `surrogate-ops containerize --bento TAG` makes its container image with podman."""
    tag = _bento(model_uris, params)
    click.echo(f"container image: surrogate-ops containerize --bento {tag}")


def _bento(model_uris, params, arch: str = "amd64") -> str:
    from surrogate_ops import registry
    from surrogate_ops.serving import bento as packing

    tag, carried = packing.build(registry.served(model_uris), _setting(params), arch)
    click.echo(f"built bento {tag} carrying {', '.join(f'{name} v{version}' for name, version in carried)}")
    return tag


@cli.command()
@click.option("--bento", "bento_tag", metavar="TAG", help="A bento built by `surrogate-ops bento` [default: build one "
              "now from --model and --params].")
@click.option("--model", "model_uris", multiple=True,
              help="models:/NAME@ALIAS or models:/NAME/VERSION, for a new bento; repeatable, one per mcpu "
                   "[default: the champion of every bundled CPU's surrogate].")
@click.option("--params", metavar="JSON", help="llvm-mca parameters for a new bento's fallback." + PARAMS_HELP)
@click.option("--image", help="The image's name [default: localhost/surrogate-ops:<bento version>].")
@click.option("--rebuild-base", is_flag=True, help="Make the base image again from the Debian archive.")
@click.option("--arch", type=click.Choice(["amd64", "arm64"]),
              help="The image's architecture [default: this host's]. A foreign one is built (and runs) here under "
                   "QEMU's user-mode emulation, registered with the kernel's binfmt_misc (root): slow, for checking "
                   "an edge image before it ships. An arm64 image serves each model's arm64 TVM build with TVM's "
                   "runtime instead of ONNX Runtime.")
@_tracking_option
def containerize(bento_tag, model_uris, params, image, rebuild_base, arch, tracking_uri) -> None:
    """Build the service's OCI image with podman, no registry needed: the bento's own Dockerfile (from
    `bentoml build`) on a base image made here from the Debian archive (Python, llvm-mca for the
    fallback, uv), holding the service, its models, ONNX Runtime and numpy (no torch, MLflow or TVM
    compiler). The host's pip settings (CA bundle, find-links) reach the build's steps, not the image.
    Set-up once: `bash deploy/podman-setup.sh`. Check the image: `python deploy/smoke_test.py IMAGE`."""
    from surrogate_ops.serving import containers

    if bento_tag and (model_uris or params):
        raise click.UsageError("--bento names a built bento; --model and --params are for building a new one")
    containers.podman()  # said before any work
    if params and _setting(params).table:
        raise click.UsageError("a per-instruction table needs the parametric llvm-mca driver, compiled against LLVM's "
                               "development files, which the image does not carry: serve it with `surrogate-ops serve`")
    arch = arch or containers.host_arch()
    tag = bento_tag or _bento(model_uris, params, arch)
    built = containers.build(tag, image, rebuild_base, log=click.echo, arch=arch)
    click.echo(f"built {built.name} ({built.size_mb:,.0f} MB, on {built.base}) in {built.seconds:.0f} s")
    click.echo(f"run it: podman run --rm -p 3000:3000 {built.name}")


@cli.command("build-native")
@click.option("--force", is_flag=True, help="Compile again even when a build for this source and LLVM exists.")
def build_native(force: bool) -> None:
    """Compile the native helpers into ~/.cache/surrogate-ops/bin (otherwise done on first use), and
    print their paths: the compiled front end (blocks to token ids in C++, with g++ alone; without
    it, blocks are read in Python) and the parametric llvm-mca driver (per-instruction scheduling
    parameters: each opcode's latency, micro-ops and port cycles, given as `per_instruction` in a
    --params file), against the development package of the llvm-mca in use (llvm-<N>-dev)."""
    from surrogate_ops.blocks import compiled
    from surrogate_ops.llvm_tools import find_tool
    from surrogate_ops.programs import parametric

    click.echo(compiled.build(force=force))
    click.echo(parametric.build(find_tool("llvm-mca"), force=force))  # SURROGATE_OPS_LLVM_MCA, else PATH


@cli.command("tracking-uri")
def tracking_uri_command() -> None:
    """Print the default MLflow tracking URI (for `export MLFLOW_TRACKING_URI=...` before `mlflow run`),
    creating the store when it does not exist yet, its artifacts in the work directory."""
    from surrogate_ops import config
    from surrogate_ops.registry import tracking

    tracking.local_store(config.default_store_uri())
    click.echo(config.default_store_uri())


@cli.command("tracking-server")
@click.option("--dir", "root", type=click.Path(file_okay=False), metavar="DIR",
              help="Where PostgreSQL's data and the artifacts live [default: <work dir>/tracking-server]. "
                   "As root, PostgreSQL runs as an unprivileged user who must be able to enter DIR.")
@click.option("--host", default="127.0.0.1", show_default=True, help="The MLflow server's address.")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--postgres-port", type=click.IntRange(1, 65535), default=5433, show_default=True,
              help="The PostgreSQL started in DIR (it listens on 127.0.0.1 only).")
@click.option("--backend-store-uri", metavar="URI",
              help="Use this database (postgresql://USER@HOST/DB, the password in PGPASSFILE or ~/.pgpass: "
                   "ps shows command lines) instead of starting PostgreSQL in DIR.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="MLflow server workers.")
@click.option("--no-auth", is_flag=True,
              help="No MLflow accounts: anyone who reaches the server reads, deletes and moves everything.")
def tracking_server(root, host, port, postgres_port, backend_store_uri, workers, no_auth) -> None:
    """Run a shared MLflow tracking server: PostgreSQL as its store, artifacts proxied to DIR.

    It asks for MLflow's own accounts (basic auth): an admin, whose password is generated into
    DIR/auth/admin-password. Clients set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD,
    and `--tracking-uri http://HOST:PORT` on any command or `export MLFLOW_TRACKING_URI=...` (and
    `mlflow run`). Runs until Ctrl-C; started again with the same DIR, everything is still there,
    credentials too. deploy/mlflow-server.md runs it for a team.
    """
    from contextlib import ExitStack

    from surrogate_ops import config
    from surrogate_ops.registry.server import ROLE, BasicAuth, MlflowServer, Postgres

    root = Path(root or config.work_dir() / "tracking-server").resolve()
    root.mkdir(parents=True, exist_ok=True)
    if no_auth:
        click.echo(f"warning: --no-auth: the server has no accounts; anyone who reaches http://{host}:{port} (every "
                   "user of this host, and more when --host is not 127.0.0.1) can read every run and model, delete "
                   "registered models and versions, and move aliases such as champion", err=True)
    with ExitStack() as stack:
        env, auth_database = {}, f"sqlite:///{root / 'auth' / 'basic_auth.db'}"
        if backend_store_uri is None:
            database = stack.enter_context(Postgres(root / "postgres", postgres_port))
            backend_store_uri, auth_database, env = database.uri, database.auth_uri, database.env()
            click.echo(f"PostgreSQL in {database.data}, on 127.0.0.1:{postgres_port} (password-only; "
                       f"{database.passfile} holds the password of MLflow's role {ROLE})")
        auth = None if no_auth else BasicAuth(root / "auth", auth_database)
        server = stack.enter_context(MlflowServer(backend_store_uri, root / "artifacts", port, host=host,
                                                  workers=workers, log=root / "mlflow-server.log", auth=auth, env=env))
        click.echo(f"MLflow tracking server at {server.url} (artifacts in {root / 'artifacts'}, log "
                   f"{root / 'mlflow-server.log'})\npoint clients at it:\n  export MLFLOW_TRACKING_URI={server.url}")
        if auth is not None:
            click.echo(f"  export MLFLOW_TRACKING_USERNAME={auth.username}\n"
                       f"  export MLFLOW_TRACKING_PASSWORD=$(cat {auth.password_file})\n"
                       f"(MLflow's basic auth; the admin adds users at {server.url}/signup)")
        try:
            while server.process is not None and server.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            click.echo("stopping the MLflow server and PostgreSQL")
            return
        raise SurrogateOpsError(f"the MLflow server stopped; see {root / 'mlflow-server.log'}")


@cli.command()
@click.option("--minutes", type=float, default=3.0, show_default=True, help="Training time budget.")
@click.option("--limit", type=click.IntRange(min=100), default=20000, show_default=True, help="Blocks to collect.")
@_tracking_option
@click.pass_context
def quickstart(ctx: click.Context, minutes: float, limit: int, tracking_uri: str | None) -> None:
    """The main job on the embedded default, end to end: register the bundled surrogates (one per
    CPU: haswell, skylake, ivybridge, znver2, znver3) where the registry has none, collect blocks from this machine's binaries labeled by llvm-mca for Haswell,
    train a small surrogate for a few minutes, register it as challenger, evaluate, promote."""
    from surrogate_ops import config
    from surrogate_ops.registry import tracking, versions

    for name in versions.bundled_names():  # a surrogate per CPU, all offline
        bundled = versions.ensure_default(name)
        if bundled:
            click.echo(f"registered the bundled surrogate as {bundled.uri} (champion)")
    data = config.work_dir() / "datasets" / "default.parquet"
    click.echo(f"== collect: {limit:,} blocks from local binaries")
    ctx.invoke(collect, limit=limit, out=str(data), quiet=True)
    click.echo(f"== train: dep/small on llvm-mca haswell labels, {minutes:g} minutes at most")
    ctx.invoke(train, data=str(data), arch="dep", preset="small", epochs=30, max_minutes=minutes,
               register=DEFAULT_MODEL, tracking_uri=tracking_uri, quiet=True)
    click.echo("== evaluate: the champion on the new data's test split")
    ctx.invoke(evaluate, model_uri=DEFAULT_MODEL_URI, data=str(data), tracking_uri=tracking_uri)
    click.echo("== promote")
    from surrogate_ops.registry import promotion

    decision = promotion.promote(DEFAULT_MODEL)  # a rejection is an outcome here, not a failure of the job
    click.echo(f"{decision}\nlogged to run {decision.run_id}")
    click.echo(f"see the runs and the registry: {tracking.ui_hint(tracking_uri)}")


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: parts and checkpoints kept, MLflow run closed


def main() -> None:
    """Entry point: user errors become one line on stderr, never a traceback."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted; run the same command again to resume", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SurrogateOpsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted; run the same command again to resume", err=True)
        sys.exit(130)
