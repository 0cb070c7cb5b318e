"""Commands of the data stage: `collect` (labeled blocks), `summary`, `build-native`."""

from __future__ import annotations

import os
from pathlib import Path

import click

from surrogate_ops import config
from surrogate_ops.cli.options import (
    PARAMS_HELP,
    cluster_report,
    join_cluster,
    read_setting,
    source_options,
)


@click.command()
@source_options
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
    from surrogate_ops.data import datasets

    out = Path(out) if out else config.work_dir() / "datasets" / "default.parquet"
    cluster = join_cluster(ray_address)
    result = datasets.collect(out, bhive=bhive, binaries=binary, asm=asm, mcpus=mcpu, limit=limit or None, workers=workers,
                              cluster=cluster,
                              may_alias=may_alias, setting=read_setting(params, tuple(mcpu)), progress=not quiet,
                              part_rows=part_rows, sample_params=sample_params or 0, seed=seed, splits=splits or None,
                              spread=spread, per_instruction=per_instruction, per_binary=per_binary, exclude=exclude,
                              generated=datasets.Generated(generate, generate_seed, density, mcpu[0] if len(mcpu) == 1 else None)
                              if generate else None)
    click.echo(f"wrote {result.path} ({result.rows:,} blocks"
               + (f", {result.resumed_rows:,} resumed from an earlier run" if result.resumed_rows else "") + ")")
    if result.rejected_path:
        click.echo(f"{result.rejected:,} blocks rejected, with reasons, in {result.rejected_path}")
    if cluster is not None:
        click.echo(cluster_report(cluster))
    click.echo(datasets.summary(datasets.load(result.path)))
    if os.environ.get("MLFLOW_RUN_ID"):  # inside `mlflow run`: the dataset is the step's artifact, for the next step
        from surrogate_ops.registry import tracking

        click.echo(f"logged to run {tracking.log_dataset(result.path, result.rows)} as {tracking.DATASET}/{result.path.name}")


@click.command()
@source_options
@click.option("--limit", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Measure at most this many blocks (in source order; repeats of a block count once).")
@click.option("--repeats", type=click.IntRange(min=1), default=16, show_default=True,
              help="Runs of each unrolling; the fewest ticks count.")
@click.option("--rounds", type=click.IntRange(min=1), default=config.MEASURE_ROUNDS, show_default=True,
              help="Passes over the blocks, a fraction of a second apart; each block's median counts (a burst "
                   "of other work can outlast one pass's repeats).")
@click.option("--cpu", type=click.IntRange(min=0), help="The CPU to pin the harness to [default: the last one].")
@click.option("--out", type=click.Path(dir_okay=False), default="measured.csv", show_default=True,
              help="BHive-format CSV to write (hex,throughput; also OUT.json and <stem>.faults.csv).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def measure(bhive, binary, asm, per_binary, exclude, generate, generate_seed, density, limit, repeats, rounds, cpu,
            out, quiet) -> None:
    """Measure basic blocks' throughput on this machine, BHive-style, in user space.

    Each block is unrolled 100 and 200 times with every register pointing into pages mapped on first
    touch; the fewest time-stamp-counter ticks over --repeats runs, calibrated against a chain of
    dependent adds (1 cycle each), give cycles per 100 iterations. A block that faults is skipped and
    listed with the reason. The CSV is what `finetune --data`, `collect --bhive` and `optimize-table
    --data` read; OUT.json says which CPU it ran on and the closest bundled surrogate to start from."""
    from surrogate_ops.data import datasets, measuring

    result = measuring.measure(out, bhive=bhive, binaries=binary, asm=asm, per_binary=per_binary, exclude=exclude,
                               generated=datasets.Generated(generate, generate_seed, density) if generate else None,
                               limit=limit, repeats=repeats, rounds=rounds, cpu=cpu,
                               progress=not quiet)
    click.echo(f"{result.cpu.name} (family {result.cpu.family}, model {result.cpu.model}: {result.cpu.label})")
    for line in result.calibration.lines():
        click.echo(line)
    click.echo(f"wrote {result.out}: {result.measured:,} blocks measured")
    if result.faults_path:
        reasons = ", ".join(f"{n:,} {why}" for why, n in result.faults.most_common())
        click.echo(f"{sum(result.faults.values()):,} skipped ({reasons}), each with its reason in {result.faults_path}")
    mcpu = result.cpu.closest
    click.echo(f"closest bundled surrogate: {mcpu}; a model of this machine:\n  surrogate-ops finetune --from "
               f"models:/llvm-mca-{mcpu}@champion --data {result.out} --mcpu {mcpu}")


@click.command()
@click.argument("dataset", type=click.Path(dir_okay=False))
def summary(dataset: str) -> None:
    """Print a dataset's size, splits, sources and llvm-mca's error against measured throughput."""
    from surrogate_ops.data import datasets

    click.echo(datasets.summary(datasets.load(dataset)))


@click.command("build-native")
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
    click.echo(parametric.build(find_tool("llvm-mca"), force=force))
    from surrogate_ops.programs import measure

    click.echo(measure.build(force=force))  # SURROGATE_OPS_LLVM_MCA, else PATH
