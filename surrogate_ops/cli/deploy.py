"""Commands of the deploy stage: `compile` (TVM), `serve`, `bento`, `containerize`, and the team's
`tracking-server` / `tracking-uri`."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from surrogate_ops import config, registry
from surrogate_ops.cli.options import (
    PARAMS_HELP,
    PLATFORMS,
    read_setting,
    shape_option,
    tracking_option,
)
from surrogate_ops.config import (
    DEFAULT_MODEL_URI,
)
from surrogate_ops.errors import SurrogateOpsError


@click.command("compile")
@click.option("--model", "model_uri", default=DEFAULT_MODEL_URI, show_default=True,
              help="models:/NAME@ALIAS or models:/NAME/VERSION.")
@click.option("--platform", "platform", type=click.Choice(PLATFORMS), default="x86", show_default=True,
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
@click.option("--tune-shape", default="256x16x16", show_default=True, callback=shape_option,
              help="BATCHxINSTRUCTIONSxTOKENS of the tuned build; longer batches use the untuned build.")
@click.option("--tune-kernels", type=click.IntRange(min=1), default=4, show_default=True,
              help="How many of the heaviest kernels (by FLOPs) to tune.")
@tracking_option
def compile_command(model_uri, platform, tvm_cpu, out, verify, tune_minutes, tune_shape, tune_kernels,
                     tracking_uri) -> None:
    """Compile a registered surrogate with Apache TVM for a platform; log the build to the model
    version's run and tag the version, so users and the service can pick a build for their hardware.

    The build keeps batch, instruction and token axes dynamic. With --tune-minutes, TVM's
    meta-schedule also tunes the heaviest kernels of a static-shape build on this CPU, and the
    record says what was tuned and whether it paid (tuned vs untuned vs ONNX Runtime)."""
    from surrogate_ops.builds import compile as compiler
    from surrogate_ops.runtime import engines

    done = compiler.compile_registered(model_uri, platform, Path(out), tvm_cpu, tune_minutes=tune_minutes,
                                       tune_shape=tune_shape, tune_kernels=tune_kernels, verify=verify, log=click.echo)
    build, name, version = done.build, done.name, done.version
    click.echo(f"built {build.library} for {platform} ({build.tvm_target}) in {build.seconds:.1f} s")
    if build.tuning:
        click.echo(build.tuned)
    if build.verified:
        click.echo(f"verified: {build.verified}: max abs diff {build.max_abs_diff:.3g}, max rel diff "
                   f"{build.max_rel_diff:.3g}; {build.emulated_blocks_per_s:,.0f} blocks/s emulated (for the record only)")
    elif build.max_rel_diff is not None:
        click.echo(f"TVM vs ONNX Runtime on {done.blocks} real blocks: max abs diff {build.max_abs_diff:.3g}, "
                   f"max rel diff {build.max_rel_diff:.3g}; {build.blocks_per_s:,.0f} blocks/s (ONNX Runtime "
                   f"{build.onnxruntime_blocks_per_s:,.0f} blocks/s, network only)")
    elif not build.runs_here:
        click.echo(f"not run here: the {platform} build loads only on {engines.platforms()[platform]['runs_on']}"
                   + (" (--verify runs it under emulation)" if "emulate" in engines.platforms()[platform] else ""))
    click.echo(f"logged to run {done.run_id} under builds/{platform}; tagged on {name} v{version}")


@click.command()
@click.option("--model", "model_uris", multiple=True,
              help="models:/NAME@ALIAS, models:/NAME/VERSION or a model directory; repeatable, one per mcpu "
                   "[default: the champion of every bundled CPU's surrogate].")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=3000, show_default=True)
@click.option("--params", metavar="JSON",
              help="llvm-mca parameters for the fallback on the model's mcpu (e.g. from `optimize --out`)." + PARAMS_HELP)
@tracking_option
def serve(model_uris, host, port, params, tracking_uri) -> None:
    """Serve the surrogate over HTTP with BentoML (`bentoml serve bento/service.py`).

    POST /predict {"blocks": [...], "mcpu": "haswell", "exact": false} answers one result per block:
    the cycles of the surrogate of that mcpu, or llvm-mca's where the surrogate is not trusted (tokens
    outside its vocabulary, longer than its limit, no surrogate for the mcpu) or exact is asked. GET /ops/healthz says which
    model and mode; GET /docs is the OpenAPI page."""
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
        read_setting(params)  # a wrong name or value fails here, before the server starts
        # the service reads it as given (a file by its whole path: the service runs in its own folder)
        spec = params if params.startswith("learned:") else str(Path(params).resolve())
        env = config.child_environ(env, mca_setting=spec)
    command = [sys.executable, "-m", "bentoml", "serve", "service:Surrogate", "--working-dir", str(bento.service_dir()),
               "--host", host, "--port", str(port)]
    click.echo(f"serving {model_uri} on http://{host}:{port} (POST /predict, GET /ops/healthz, /docs)")
    os.execvpe(command[0], command, env)


@click.command()
@click.option("--model", "model_uris", multiple=True,
              help="models:/NAME@ALIAS or models:/NAME/VERSION: a model the bento carries; repeatable, one per "
                   "mcpu [default: the champion of every bundled CPU's surrogate].")
@click.option("--params", metavar="JSON",
              help="llvm-mca parameters the bento's fallback uses (e.g. from `optimize --out`)." + PARAMS_HELP)
@tracking_option
def bento(model_uris, params, tracking_uri) -> None:
    """Build a bento, offline: bento/service.py and bentofile.yaml with the model (and its TVM build
    for this host, if any) and the package's source, staged in a scratch folder, then `bentoml build`.
    `surrogate-ops containerize --bento TAG` makes its container image with podman."""
    tag = _bento(model_uris, params)
    click.echo(f"container image: surrogate-ops containerize --bento {tag}")


def _bento(model_uris, params, arch: str = "amd64") -> str:
    from surrogate_ops.serving import bento as packing

    tag, carried = packing.build(registry.served(model_uris), read_setting(params), arch)
    click.echo(f"built bento {tag} carrying {', '.join(f'{name} v{version}' for name, version in carried)}")
    return tag


@click.command()
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
@tracking_option
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
    if params and read_setting(params).table:
        raise click.UsageError("a per-instruction table needs the parametric llvm-mca driver, compiled against LLVM's "
                               "development files, which the image does not carry: serve it with `surrogate-ops serve`")
    arch = arch or containers.host_arch()
    tag = bento_tag or _bento(model_uris, params, arch)
    built = containers.build(tag, image, rebuild_base, log=click.echo, arch=arch)
    click.echo(f"built {built.name} ({built.size_mb:,.0f} MB, on {built.base}) in {built.seconds:.0f} s")
    click.echo(f"run it: podman run --rm -p 3000:3000 {built.name}")


@click.command("tracking-uri")
def tracking_uri_command() -> None:
    """Print the default MLflow tracking URI (for `export MLFLOW_TRACKING_URI=...` before `mlflow run`),
    creating the store when it does not exist yet, its artifacts in the work directory."""
    from surrogate_ops import config
    from surrogate_ops.registry import tracking

    tracking.local_store(config.default_store_uri())
    click.echo(config.default_store_uri())


@click.command("tracking-server")
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
