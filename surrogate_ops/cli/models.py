"""Commands of training and the registry: `train`, `finetune`, `confidence`, `evaluate`, `promote`, and
`quickstart`, the whole path on a small default."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from surrogate_ops import config, registry
from surrogate_ops.cli.data import collect
from surrogate_ops.cli.options import (
    ARCHITECTURES,
    SIZES,
    aliases_line,
    device_option,
    parse_weights,
    tracking_option,
)
from surrogate_ops.config import (
    COMBINE_HOWS,
    DEFAULT_MODEL,
    DEFAULT_MODEL_URI,
    PRECISIONS,
    STREAM_ROWS,
    EngineName,
)
from surrogate_ops.errors import SurrogateOpsError


@click.command()
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
@device_option
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="bf16: forward pass under bfloat16 autocast (weights, optimizer and loss stay float32).")
@click.option("--stream/--in-memory", default=None,
              help="Read the train split from the Parquet file a few row groups at a time as training goes, "
                   f"holding only the val split in memory (for datasets larger than memory) "
                   f"[default: --stream past {STREAM_ROWS:,} rows].")
@click.option("--from", "init_from", metavar="URI",
              help=f"Start from this registered surrogate's weights and architecture (e.g. {DEFAULT_MODEL_URI}); "
                   "on data from `collect --sample-params` it becomes a parameter-conditioned surrogate.")
@click.option("--register", metavar="NAME", help="Register the model as a new version of NAME (alias challenger).")
@click.option("--resume", metavar="RUN_ID", help="Continue an interrupted run from its last checkpoint.")
@click.option("--save-dir", type=click.Path(file_okay=False), help="Also copy the model directory here.")
@click.option("--ray", "ray_address", metavar="local|ADDRESS",
              help="Train data-parallel with Ray Train on a Ray cluster (its head, or local: one on this machine).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="With --ray: training processes (each a share of every batch; --batch-size is the global batch).")
@click.option("--max-restarts", type=click.IntRange(min=0), default=0, show_default=True,
              help="With --ray: start the group again this many times after a lost worker (the run resumes from "
                   "its last checkpoint).")
@tracking_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(data, arch, preset, sizes, target, mcpu, epochs, batch_size, lr, patience, seed, max_minutes, train_limit,
          weights, threads, device, precision, stream, init_from, register, resume, save_dir, ray_address, workers,
          max_restarts, tracking_uri, quiet) -> None:
    """Train a surrogate, log the run to MLflow and optionally register it.

    Loss: mean absolute percentage error; early stopping on the validation split; figures on the
    test split. Checkpoints every epoch: an interrupted run continues with --resume RUN_ID. A
    dataset collected with --sample-params trains a parameter-conditioned surrogate (block and
    llvm-mca parameters in, cycles out), the model `optimize` descends through.

    Data-parallel: `torchrun --nproc-per-node N -m surrogate_ops train ...` (add --max-restarts K
    to torchrun to survive a lost process), or --ray local|ADDRESS --workers N; one MLflow run,
    one registered model either way.
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
                                  device=device, precision=precision, weights=parse_weights(weights), stream=stream)
    if ray_address:
        if resume or parent is not None:
            raise SurrogateOpsError("--ray trains a new surrogate from scratch: --resume and --from run in one process "
                                    "or under torchrun")
        from surrogate_ops.programs import cluster
        from surrogate_ops.training import on_ray

        click.echo(f"training on the Ray cluster at {ray_address}: {cluster.connect(ray_address).cpus} CPUs", err=True)
        report = on_ray.train_on_ray(config, workers, register=register, max_restarts=max_restarts)
        click.echo(f"run {report['run_id']}: {int(report['epochs_run'])} epochs on {workers} Ray workers in "
                   f"{report['seconds']:.0f} s, best val MAPE {100 * report['best_val_mape']:.2f}%")
        if report.get("registered"):
            click.echo(f"registered models:/{report['registered']}")
        return
    result = training.train(config, register=register, resume=resume, progress=not quiet,
                            init_from=parent, run_tags={"parent_uri": init_from} if init_from else None,
                            on_start=lambda run_id: click.echo(f"run {run_id} (if interrupted: --resume {run_id})"))
    if result is None:  # a torchrun process other than rank 0: rank 0 reports
        return
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
        click.echo(f"registered {r.uri} ({aliases_line(r)})")


@click.command()
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
@device_option
@tracking_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
def confidence(model_uri, data, split, mcpu, epochs, register, save_dir, device, tracking_uri, quiet) -> None:
    """Teach a surrogate to estimate its own error per block (an error head on its frozen network).

    The head is fit on the surrogate's relative errors against llvm-mca on blocks it never trained
    on, and scored on a fifth of them it was not fit on: how much of the error routing the least
    trusted 5/10/20% of blocks to llvm-mca removes. The result answers `estimated_error` in every
    answer, and honours `max_error` in the service and --max-error in `predict`."""
    from surrogate_ops.training import confidence as stage

    result = stage.calibrate(model_uri, data, mcpu=mcpu, split=split, epochs=epochs, register=register,
                             progress=not quiet, device=device)
    click.echo(f"error head {result.report}")
    if save_dir:
        shutil.copytree(result.model.path, save_dir, dirs_exist_ok=True)
        click.echo(f"model directory copied to {save_dir}")
    if result.registered:
        click.echo(f"registered {result.registered.uri} ({aliases_line(result.registered)}); run {result.run_id}")


@click.command()
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
@tracking_option
def evaluate(model_uri, data, split, mcpu, engine, tracking_uri) -> None:
    """Print MAPE and Kendall's tau of a model against llvm-mca and measured throughput.

    The figures also go on an MLflow run of the evaluation's own (metrics, the dataset's digest,
    plots/predicted_vs_mca.png in cycles per 100 iterations)."""
    from surrogate_ops.registry.evaluate import evaluation_run

    model_uri = model_uri or config.model_uri(mcpu or config.DEFAULT_MCPU)
    done = evaluation_run(model_uri, data, split, mcpu, engine)
    click.echo(f"{model_uri} on the {split} split of {data}:")
    for line in done.evaluation.lines():
        click.echo("  " + line)
    click.echo(f"  logged to run {done.run_id}")


@click.command()
@click.argument("name")
@click.option("--data", type=click.Path(dir_okay=False),
              help="Held-out data: a dataset from `collect` or a BHive-format CSV [default: the challenger's dataset].")
@click.option("--force", is_flag=True,
              help="Move champion to the challenger even when it is rejected (worse, or lacking what the "
                   "champion serves); the figures are still taken and recorded.")
@click.option("--check", is_flag=True, help="Only decide: exit 0 or 1, move no alias, record nothing on the version.")
@tracking_option
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


@click.command()
@click.option("--from", "parent_uri", default=DEFAULT_MODEL_URI, show_default=True,
              help="The registered surrogate to start from (models:/NAME@ALIAS or models:/NAME/VERSION).")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Measured throughputs: a BHive-format CSV (hex,throughput; collected once, may-alias.csv "
                   "beside it honoured) or a dataset from `collect`.")
@click.option("--target", type=click.Choice(["measured"]), default="measured", show_default=True)
@click.option("--mcpu", help="Microarchitecture of the measurements [default: the parent's].")
@click.option("--register", metavar="NAME", help="Model name for the result [default: <parent>-<data>-measured].")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--patience", type=click.IntRange(min=1), default=4, show_default=True,
              help="Stop after this many epochs without a better validation MAPE (the best epoch is kept).")
@click.option("--lr", type=float, default=5e-4, show_default=True)
@click.option("--train-limit", type=click.IntRange(min=0), help="Use at most this many training blocks (0: all).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-minutes", type=float, help="Stop after this long (the best epoch is kept; 0: no limit).")
@device_option
@click.option("--members", type=click.IntRange(min=1), default=1, show_default=True,
              help="Fine-tune this many times (seeds SEED, SEED+1, ...; --max-minutes each) and register them "
                   "combined (--combine).")
@click.option("--combine", "how", type=click.Choice(COMBINE_HOWS), default="ensemble", show_default=True,
              help="How members answer as one: ensemble (the geometric mean of their answers; K times the cost "
                   "per block) or soup (one network with their mean weights).")
@tracking_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def finetune(parent_uri, data, target, mcpu, register, epochs, patience, lr, train_limit, seed, max_minutes, device,
             members, how, tracking_uri, quiet) -> None:
    """Fine-tune a registered llvm-mca surrogate on measured throughputs (surrogate adaptation).

    The vocabulary grows for unseen tokens (learned ones keep their ids and weights); training
    uses MAPE loss with early stopping on the validation split; the run is tagged with its parent
    version, and the result is registered as a challenger of a model named for the task."""
    from surrogate_ops.training import adaptation, loop

    loop.device(device)  # a missing GPU fails before the parent is looked up
    name = registry.open(parent_uri, registered=True).name
    register = register or adaptation.default_name(name, Path(data), target)
    result = adaptation.finetune(parent_uri, data, target=target, register=register, mcpu=mcpu, epochs=epochs, lr=lr,
                                 train_limit=train_limit or None, seed=seed, max_minutes=max_minutes or None,
                                 progress=not quiet, device=device, patience=patience, members=members, how=how)
    what = f"{members} members ({how})" if members > 1 else f"{result.epochs_run} epochs"
    _report(f"fine-tuned {parent_uri} in {result.seconds:.0f} s ({what})", result)


@click.command()
@click.argument("members", nargs=-1, required=True)
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Where to score the result: measured throughputs (a BHive-format CSV or a collected dataset).")
@click.option("--combine", "how", type=click.Choice(COMBINE_HOWS), default="ensemble", show_default=True,
              help="ensemble: the geometric mean of the members' answers; soup: one network with their mean weights.")
@click.option("--mcpu", help="Microarchitecture of the measurements [default: the first member's].")
@click.option("--register", metavar="NAME", help="Model name for the result (a new version, challenger).")
@tracking_option
def combine(members, data, how, mcpu, register, tracking_uri) -> None:
    """Combine surrogates fine-tuned from one parent on one dataset (MEMBERS: model directories or
    models:/ URIs; the same vocabulary) into one model, scored on the data's test split.

    For members trained elsewhere, a GPU machine say; `finetune --members K` trains and combines in one go."""
    from surrogate_ops.training import combine as combining

    result = combining.combine(list(members), data, how=how, register=register, mcpu=mcpu)
    _report(f"combined {len(members)} members ({how})", result)


def _report(what: str, result) -> None:
    m = result.metrics
    click.echo(f"{what}: {100 * m['test_mape_vs_measured']:.2f}% MAPE vs measured (tau {m['test_tau_vs_measured']:.3f}); "
               f"llvm-mca {100 * m['test_mca_mape_vs_measured']:.2f}% on the same {int(m['test_measured_blocks'])} "
               f"test blocks; {int(m['test_skipped'])} of {int(m['test_blocks'] + m['test_skipped'])} not answered "
               "(over the model's length limit)")
    if result.registered:
        click.echo(f"registered {result.registered.name} v{result.registered.version} "
                   f"({aliases_line(result.registered)}); run {result.run_id}")


@click.command()
@click.option("--minutes", type=float, default=3.0, show_default=True, help="Training time budget.")
@click.option("--limit", type=click.IntRange(min=100), default=20000, show_default=True, help="Blocks to collect.")
@tracking_option
@click.pass_context
def quickstart(ctx: click.Context, minutes: float, limit: int, tracking_uri: str | None) -> None:
    """The main job on the embedded default, end to end: register the bundled surrogates (one per
    CPU: haswell, skylake, ivybridge, znver2, znver3) where the registry has none, collect blocks from this machine's binaries labeled by llvm-mca for Haswell,
    train a small surrogate for a few minutes, register it as challenger, evaluate, promote."""
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
