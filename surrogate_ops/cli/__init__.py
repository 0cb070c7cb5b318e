"""The `surrogate-ops` command line: thin click commands over the library, a module per pipeline stage.

Each command parses its options, calls one library function and prints; the MLflow store is
configured once, from --tracking-uri, before any command body runs. The commands live beside this
file (`data`, `models`, `predict`, `deploy`, `search`; shared options in `options`); `MLproject`'s
entry points call them."""

from __future__ import annotations

import signal
import sys

import click

from surrogate_ops import config
from surrogate_ops.cli import data, deploy, models, predict, search
from surrogate_ops.errors import SurrogateOpsError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--llvm-mca", "llvm_mca", metavar="PATH",
              help="llvm-mca to run (default: the one on PATH; also SURROGATE_OPS_LLVM_MCA).")
@click.version_option(package_name="surrogate-ops")
def cli(llvm_mca: str | None) -> None:
    """Neural surrogates of programs, starting with llvm-mca: collect labeled blocks, train,
    register, compile, serve, and fine-tune on measured throughput."""
    if llvm_mca:  # for this process and the ones it starts (labeling workers, the service)
        config.export(llvm_mca=llvm_mca)


COMMANDS = (data.collect, data.measure, data.summary, data.build_native, models.train, models.finetune, models.combine, models.confidence,
            models.evaluate, models.promote, models.quickstart, predict.predict, predict.coverage,
            deploy.compile_command, deploy.serve, deploy.bento, deploy.containerize, deploy.tracking_uri_command,
            deploy.tracking_server, search.optimize, search.optimize_table, search.table_diff, search.study)
for command in COMMANDS:
    cli.add_command(command)


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
