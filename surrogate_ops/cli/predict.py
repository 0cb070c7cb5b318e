"""Commands that answer a user's code: `predict` (a file of blocks) and `coverage` (how much of it each
CPU's surrogate answers itself)."""

from __future__ import annotations

import click

from surrogate_ops import registry
from surrogate_ops.cli.options import (
    PARAMS_HELP,
    read_setting,
    tracking_option,
)
from surrogate_ops.config import (
    AUTO_ENGINE,
    ENGINE_CHOICES,
    Source,
    Target,
)


@click.command()
@click.option("--model", "model_uri",
              help="models:/NAME@ALIAS, models:/NAME/VERSION, or a model directory [default: the champion "
                   "surrogate of --mcpu, models:/llvm-mca-<mcpu>@champion].")
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Assembly blocks separated by blank lines, or a CSV with a block or hex column.")
@click.option("--mcpu", default="haswell", show_default=True)
@click.option("--target", type=click.Choice([t.value for t in Target]), default=Target.MCA.value, show_default=True,
              help="What the default surrogate predicts: llvm-mca's cycles (llvm-mca-<mcpu>), or the throughput "
                   "measured on the CPU (llvm-mca-<mcpu>-measured, from `finetune`).")
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
@tracking_option(lazy=True)
def predict(model_uri, input_path, mcpu, target, program, params, engine, no_fallback, max_error, tracking_uri) -> None:
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

    from surrogate_ops.serving.files import predict_file

    answers = predict_file(input_path, mcpu, model_uri, exact=bool(program), setting=read_setting(params, (mcpu,)),
                           engine=engine, fallback=not no_fallback, max_error=max_error, tracking_uri=tracking_uri,
                           target=target)
    out = csv.writer(click.get_text_stream("stdout"), lineterminator="\n")
    out.writerow(["index", "cycles", "source", "reason", "estimated_error"])
    for index, answer in answers:
        if "error" in answer:
            out.writerow([index, "", Source.ERROR, answer["error"], ""])
            click.echo(answer["error"], err=True)
        else:
            out.writerow([index, f"{answer['cycles']:g}", answer["source"],
                          "" if program else answer.get("reason", ""), answer.get("estimated_error", "")])
    sources = answers.sources
    if sources[Source.LLVM_MCA] and not program or sources[Source.ERROR]:
        click.echo(f"{sum(sources.values()):,} blocks: " + ", ".join(f"{n:,} {source}" for source, n in sources.items()
                                                               if n), err=True)


@click.command()
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
@tracking_option(lazy=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def coverage(binary, asm, mcpu, model_uri, limit, out, no_log, tracking_uri, quiet) -> None:
    """How much of your own code the surrogate of each CPU answers itself.

    The blocks of --binary and --asm are answered, per CPU, under the fallback policy `predict` and
    the service follow; a block the surrogate is not trusted on goes to llvm-mca, and the rules that
    sent them are counted (with the unknown tokens themselves). llvm-mca also runs on every block,
    so the surrogate's own answers are scored against it (MAPE, Kendall's tau), never llvm-mca's
    answers behind its back. The figures also go on an MLflow run of their own (metrics per CPU:
    <cpu>_answered_share, <cpu>_mape_vs_mca, ...; artifacts coverage.csv and reasons.json)."""
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
