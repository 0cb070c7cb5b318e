"""Registry operations per second with concurrent clients: PostgreSQL vs SQLite (issue 19).

Stores, each fresh, raced in turns:
- `server+postgresql`: `mlflow server` over a PostgreSQL started here (tracking_server.Postgres);
- `server+sqlite`: the same server over a SQLite file;
- `sqlite direct`: every client opens the SQLite file itself (the single-machine default).
`--clients` processes each loop for `--seconds` over the operations a team's registry sees, all on
one registered model (the contended case): create a version, move the challenger alias to it,
read the champion alias, list the versions. Operations per second, and the operations that failed
(lock errors, timeouts) are counted apart: none may fail.

    python benchmarks/registry_race.py [--clients 4] [--seconds 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

NAME = "race"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(uri: str, source: tuple[str, str], seconds: float, start_at: float, queue) -> None:
    """One client's loop: (operations done, operations failed, first failure, versions created)."""
    import logging

    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    registry = MlflowClient(uri, registry_uri=uri)
    done = failed = created = 0
    first = None
    time.sleep(max(0.0, start_at - time.time()))
    end = time.time() + seconds
    while time.time() < end:
        for op in ("create", "alias", "read", "list"):
            try:
                if op == "create":
                    version = registry.create_model_version(NAME, source[0], run_id=source[1]).version
                    created += 1
                elif op == "alias":
                    registry.set_registered_model_alias(NAME, "challenger", version)
                elif op == "read":
                    registry.get_model_version_by_alias(NAME, "champion")
                else:
                    registry.search_model_versions(f"name='{NAME}'", max_results=10)
                done += 1
            except Exception as exc:  # noqa: BLE001 - every failure counted, the first kept
                failed += 1
                first = first or f"{op}: {type(exc).__name__}: {str(exc)[:200]}"
    queue.put((done, failed, first, created))


def race(uri: str, clients: int, seconds: float) -> dict:
    from mlflow import MlflowClient

    setup = MlflowClient(uri, registry_uri=uri)
    run = setup.create_run(setup.create_experiment("registry-race", artifact_location=None))
    source = (f"{run.info.artifact_uri}/model", run.info.run_id)  # every version points into one run's artifacts
    setup.create_registered_model(NAME)
    first = setup.create_model_version(NAME, *source).version
    setup.set_registered_model_alias(NAME, "champion", first)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start_at = time.time() + 8  # every client imported and connected before the clock starts
    workers = [context.Process(target=client, args=(uri, source, seconds, start_at, queue)) for _ in range(clients)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=seconds + 300) for _ in workers]
    for w in workers:
        w.join()
    versions = len(setup.search_model_versions(f"name='{NAME}'", max_results=100000))
    done = sum(r[0] for r in results)
    return {"ops_per_s": done / seconds, "failed": sum(r[1] for r in results),
            "first_failure": next((r[2] for r in results if r[2]), None),
            "versions_lost": 1 + sum(r[3] for r in results) - versions}  # created and answered, yet not there


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="mlflow server workers")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from surrogate_ops.registry.server import MlflowServer, Postgres

    figures: dict[str, list[dict]] = {"server+postgresql": [], "server+sqlite": [], "sqlite direct": []}
    for repeat in range(args.repeats):
        for store in figures:
            root = Path(tempfile.mkdtemp(prefix="registry-race-"))
            root.chmod(0o755)
            try:
                if store == "sqlite direct":
                    result = race(f"sqlite:///{root / 'mlflow.db'}", args.clients, args.seconds)
                elif store == "server+sqlite":
                    with MlflowServer(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", free_port(),
                                      workers=args.workers) as server:
                        result = race(server.url, args.clients, args.seconds)
                else:
                    with Postgres(root / "postgres", free_port()) as database, \
                            MlflowServer(database.uri, root / "artifacts", free_port(), workers=args.workers,
                                         env=database.env()) as server:
                        result = race(server.url, args.clients, args.seconds)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            figures[store].append(result)
            print(f"  [{repeat + 1}] {store:<18} {result['ops_per_s']:7.1f} ops/s  failed {result['failed']}  "
                  f"versions lost {result['versions_lost']}"
                  + (f"  ({result['first_failure']})" if result["first_failure"] else ""), flush=True)
    print(f"{args.clients} clients, {args.seconds:g} s each, median of {args.repeats}:")
    summary = {}
    for store, runs in figures.items():
        rate = statistics.median(r["ops_per_s"] for r in runs)
        summary[store] = {"ops_per_s": rate, "failed": sum(r["failed"] for r in runs),
                          "versions_lost": sum(r["versions_lost"] for r in runs)}
        print(f"  {store:<18} {rate:7.1f} ops/s  failed operations {summary[store]['failed']}  "
              f"versions lost {summary[store]['versions_lost']}")
    pg, lite = summary["server+postgresql"]["ops_per_s"], summary["server+sqlite"]["ops_per_s"]
    print(f"  PostgreSQL / SQLite behind the same server: {pg / lite:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"runs": figures, "summary": summary}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    main()
