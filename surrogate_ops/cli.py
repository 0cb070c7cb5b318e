"""The `surrogate-ops` command line: thin click commands over the library, one per pipeline stage."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from surrogate_ops.errors import SurrogateOpsError


def _read_params(path: str | None) -> dict | None:
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SurrogateOpsError(f"--params {path}: {exc}") from None
    if not isinstance(data, dict):
        raise SurrogateOpsError(f"--params {path}: expected a JSON object of llvm-mca option names to values")
    return data


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--llvm-mca", "llvm_mca", metavar="PATH", envvar="SURROGATE_OPS_LLVM_MCA",
              help="llvm-mca to run (default: the one on PATH; also SURROGATE_OPS_LLVM_MCA).")
@click.version_option(package_name="surrogate-ops")
def cli(llvm_mca: str | None) -> None:
    """Neural surrogates of programs, starting with llvm-mca: collect labeled blocks, train,
    register, compile, serve."""
    if llvm_mca:
        os.environ["SURROGATE_OPS_LLVM_MCA"] = llvm_mca


@cli.command()
@click.option("--bhive", multiple=True, type=click.Path(dir_okay=False), metavar="CSV",
              help="BHive-format CSV (hex,throughput); repeatable. Its mcpu comes from the name (hsw.csv: haswell).")
@click.option("--binary", multiple=True, type=click.Path(), metavar="PATH",
              help="ELF binary or directory of them to cut into basic blocks; repeatable.")
@click.option("--asm", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="Text file of assembly blocks separated by blank lines; repeatable.")
@click.option("--mcpu", multiple=True, default=("haswell",), show_default=True,
              help="llvm-mca -mcpu to label with; repeatable.")
@click.option("--limit", type=click.IntRange(min=1), help="Keep at most this many blocks (in source order).")
@click.option("--workers", type=click.IntRange(min=1), help="llvm-mca processes in parallel [default: cores].")
@click.option("--may-alias", type=click.Path(dir_okay=False), metavar="CSV",
              help="BHive may-alias list [default: may-alias.csv beside the --bhive file].")
@click.option("--params", type=click.Path(dir_okay=False), metavar="JSON",
              help="llvm-mca parameters to label with (JSON: option name to value).")
@click.option("--out", type=click.Path(dir_okay=False), help="Parquet file to write [default: <work dir>/datasets/default.parquet].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--part-rows", type=click.IntRange(min=1), default=2000, hidden=True,
              help="Blocks per resumable part file.")
def collect(bhive, binary, asm, mcpu, limit, workers, may_alias, params, out, quiet, part_rows) -> None:
    """Build a labeled dataset: blocks from sources, labeled by llvm-mca, as Parquet.

    With no source, cuts basic blocks out of binaries found on this machine. An interrupted run
    resumes where it stopped when run again with the same --out.
    """
    from surrogate_ops import config, datasets

    out = Path(out) if out else config.work_dir() / "datasets" / "default.parquet"
    result = datasets.collect(out, bhive=bhive, binaries=binary, asm=asm, mcpus=mcpu, limit=limit, workers=workers,
                              may_alias=may_alias, params=_read_params(params), progress=not quiet,
                              part_rows=part_rows)
    click.echo(f"wrote {result.path} ({result.rows:,} blocks"
               + (f", {result.resumed_rows:,} resumed from an earlier run" if result.resumed_rows else "") + ")")
    if result.rejected_path:
        click.echo(f"{result.rejected:,} blocks rejected, with reasons, in {result.rejected_path}")
    click.echo(datasets.summary(datasets.load(result.path)))


@cli.command()
@click.argument("dataset", type=click.Path(dir_okay=False))
def summary(dataset: str) -> None:
    """Print a dataset's size, splits, sources and llvm-mca's error against measured throughput."""
    from surrogate_ops import datasets

    click.echo(datasets.summary(datasets.load(dataset)))


@cli.command()
@click.pass_context
def quickstart(ctx: click.Context) -> None:
    """The main job on the embedded default: collect blocks from this machine's binaries, label them
    with llvm-mca for Haswell, and print the dataset's summary."""
    ctx.invoke(collect, limit=5000)


def main() -> None:
    """Entry point: user errors become one line on stderr, never a traceback."""
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
