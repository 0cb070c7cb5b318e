"""Commands of surrogate optimization and the studies: `optimize`, `optimize-table`, `table-diff`,
`study adaptation`, `study capacity`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from surrogate_ops.cli.options import (
    join_cluster,
    search_options,
    tracking_option,
)
from surrogate_ops.config import (
    DEFAULT_MODEL_URI,
)


@click.command()
@click.option("--model", "model_uri", required=True, metavar="URI",
              help="A parameter-conditioned surrogate (trained on `collect --sample-params` data): "
                   "models:/NAME@ALIAS, models:/NAME/VERSION or a model directory.")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Measured throughputs: BHive-format CSV (may-alias.csv beside it honoured) or a dataset.")
@click.option("--budget", required=True, type=click.IntRange(min=1), metavar="K",
              help="llvm-mca block evaluations per method, the surrogate's training data included.")
@click.option("--mcpu", help="Microarchitecture of the measurements [default: the model's].")
@click.option("--search-blocks", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Training blocks each llvm-mca run of the search takes: a baseline's trial (trials = budget / "
                   "this), the surrogate's anchors and each of its checks.")
@click.option("--checks", type=click.IntRange(min=0), default=4, show_default=True,
              help="The surrogate's best candidates to check with llvm-mca (charged to its budget); 0 trusts its choice.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Spread the checks over this many descents, fine-tuning the surrogate on llvm-mca's answers between.")
@click.option("--no-anchor", is_flag=True,
              help="Descend on the surrogate's own predictions, not on its change to llvm-mca's default answers.")
@click.option("--steps", type=click.IntRange(min=1), default=100, show_default=True, help="Descent steps per round.")
@click.option("--restarts", type=click.IntRange(min=0), default=8, show_default=True,
              help="Random starts beside the expert defaults.")
@click.option("--lr", type=float, default=0.1, show_default=True, help="Adam step on the relaxed parameters.")
@click.option("--out", type=click.Path(dir_okay=False), metavar="JSON",
              help="Write the surrogate-found parameters here (llvm-mca option names to values).")
@search_options
@tracking_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def optimize(model_uri, data, budget, mcpu, baselines, search_blocks, checks, rounds, no_anchor, steps, restarts, lr,
             test_limit, seed, out, ray_address, device, tracking_uri, quiet) -> None:
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
                                         checks=checks, rounds=rounds, anchored=not no_anchor, test_limit=test_limit,
                                         seed=seed, device=device)
    result = optimization.optimize(config, out=out, progress=not quiet, cluster=join_cluster(ray_address))
    click.echo(f"held-out llvm-mca error ({result.test_blocks:,} measured blocks, may-alias excluded; "
               f"budget {budget:,} llvm-mca block evaluations):")
    for o in result.outcomes.values():
        changed = {k: v for k, v in o.setting.items() if v != result.outcomes["defaults"].setting.get(k)}
        click.echo(f"  {o.method:<10} MAPE {100 * o.test_mape:6.2f}%  tau {o.test_tau:.4f}  "
                   f"evaluations {o.evaluations:>7,}  " + (", ".join(f"{k}={v}" for k, v in changed.items()) or "defaults"))
    if out:
        click.echo(f"surrogate-found parameters written to {out}")
    click.echo(f"MLflow run {result.run_id}")


@click.command("optimize-table")
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
@click.option("--checks", type=click.IntRange(min=1), default=6, show_default=True,
              help="Rounded tables from along the descent checked with the real driver (charged to the surrogate).")
@click.option("--restarts", type=click.IntRange(min=1), default=1, show_default=True,
              help="Descents, each on its own minibatch order, --checks tables of each checked (at a small "
                   "--steps the order decides whether any table beats the stock one).")
@click.option("--search-blocks", type=click.IntRange(min=10), default=2000, show_default=True,
              help="Training blocks each check and each baseline trial runs (trials = the surrogate's budget / this).")
@click.option("--out", type=click.Path(dir_okay=False), metavar="JSON",
              help="Write the surrogate's table here, as --params takes it.")
@click.option("--no-register", is_flag=True, help="Log the run but register no version of llvm-mca-<mcpu>-table.")
@search_options
@tracking_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def optimize_table(data, labels, mcpu, model_uri, min_count, epochs, steps, lr, checks, restarts, search_blocks, baselines, seed,
                   test_limit, out, no_register, ray_address, device, tracking_uri, quiet) -> None:
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
                                            checks=checks, restarts=restarts, search_blocks=search_blocks,
                                            baselines=chosen, seed=seed, test_limit=test_limit, device=device)
    result = table_search.search(config, progress=not quiet, register=not no_register,
                                 cluster=join_cluster(ray_address))
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


@click.command("table-diff")
@click.argument("table", metavar="TABLE")
@click.option("--plot", type=click.Path(dir_okay=False), metavar="PNG", help="Draw the changes here.")
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False), metavar="CSV", help="Write the changes here.")
def table_diff(table, plot, csv_out) -> None:
    """What a learned per-instruction table changes from llvm-mca's stock one: every opcode, value,
    stock and learned (TABLE: learned:haswell, or a table file from `optimize-table --out` or an
    optimize-table run's table.json)."""
    from surrogate_ops import plots
    from surrogate_ops.programs import tables

    changes, data = tables.table_changes(table)
    held = data.get("_held_out", {})
    click.echo(f"{len(data['per_instruction'])} opcodes changed, {len(changes)} values (-mcpu={data.get('_mcpu', '?')})"
               + (f"; held-out MAPE {100 * held['test_mape']:.2f}%" if "test_mape" in held else ""))
    if not changes.empty:
        ordered = changes.assign(size=changes["change"].abs()).sort_values(["size", "opcode"], ascending=[False, True])
        click.echo(ordered.drop(columns="size").to_string(index=False))
    if csv_out:
        changes.to_csv(csv_out, index=False)
    if plot:
        plots.table_diff(changes, Path(plot), f"{table}: learned vs stock (-mcpu={data.get('_mcpu', '?')})")
        click.echo(f"plot: {plot}")


@click.group()
def study() -> None:
    """The seed paper's studies, each as one command (every run logged to MLflow)."""


@study.command("adaptation")
@click.option("--from", "parent_uri", default=DEFAULT_MODEL_URI, show_default=True)
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Measured throughputs (BHive-format CSV or a collected dataset).")
@click.option("--mcpu", help="Microarchitecture of the measurements [default: the parent's].")
@click.option("--train-sizes", "sizes", help="Training-set sizes, comma-separated [default: 6 log-spaced from 100 to all].")
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=1500, show_default=True,
              help="Optimizer steps per run, the same for both methods.")
@click.option("--val-limit", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="adaptation", show_default=True,
              help="Folder for adaptation.csv/.md/.png and the per-run table.")
@click.option("--small", type=click.BOOL, is_flag=False, flag_value=True, default=False,
              help="A small, fast configuration (sizes 100,300; one seed; 150 steps); also --small true|false.")
@tracking_option
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
@tracking_option
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
