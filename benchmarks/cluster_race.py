"""Labeling on Ray vs labeling on the local cores, on the same cores of this machine (issue 19).

Two measures, each run in turns with the local one, median of `--repeats`:
- `LlvmMca.run` on the same canonical blocks: local threads vs a Ray cluster already running here
  (a head of `--cpus` CPUs started with `ray start` on loopback), the labeling alone;
- the whole `surrogate-ops collect` command: local, `--ray ADDRESS` (that cluster) and `--ray local`
  (which starts a Ray instance of its own each time, as a first try would).
Every Ray run's labels must equal the local run's. Overhead is Ray's time over local's, minus 1;
blocks/s per core is the labeling rate over the cluster's CPUs.

    python benchmarks/cluster_race.py [--blocks 20000] [--bhive ../shared/data/bhive/hsw.csv] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import bhive_hexes

from surrogate_ops.blocks import generate
from surrogate_ops.blocks.hexcode import disassemble
from surrogate_ops.data import datasets
from surrogate_ops.programs import LlvmMca
from surrogate_ops.programs import cluster as ray_cluster

CLI = [sys.executable, "-m", "surrogate_ops"]


def start_head(cpus: int, env: dict, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind((ray_cluster.LOOPBACK, 0))
        port = s.getsockname()[1]
    address = f"{ray_cluster.LOOPBACK}:{port}"
    with log.open("w") as out:
        head = subprocess.Popen([shutil.which("ray") or "ray", "start", "--head", "--block", "--port", str(port),
                                 "--node-ip-address", ray_cluster.LOOPBACK, "--num-cpus", str(cpus),
                                 "--include-dashboard=false", "--disable-usage-stats"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection((ray_cluster.LOOPBACK, port), timeout=1).close()
            time.sleep(3)  # the GCS answers before the raylet has registered
            return head, address
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the Ray head did not start: {log.read_text()[-2000:]}")


def timed(args: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds of a command, and the CPU seconds of its own process and the children it
    waited for (with `--ray ADDRESS` llvm-mca runs in the cluster's workers, so that is the
    driver's share alone)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{stderr[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=20000)
    parser.add_argument("--bhive", type=Path, help="Label these BHive blocks instead of generated ones.")
    parser.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="Write the figures here.")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cluster-race-"))
    env = {**os.environ, "SURROGATE_OPS_HOME": str(work / "home"), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    os.environ.update({k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
    if args.bhive:
        hexes = bhive_hexes(args.bhive, args.blocks)
        source = work / "hsw.csv"
        source.write_text("hex,throughput\n" + "".join(f"{h},100\n" for h in hexes))
        blocks = [b for b in disassemble(hexes).blocks if b]
        collect = ["--bhive", str(source)]
    else:
        blocks = generate.generate(args.blocks, seed=11)
        collect = ["--generate", str(args.blocks), "--generate-seed", "11"]
    print(f"{len(blocks):,} blocks ({'BHive ' + args.bhive.name if args.bhive else 'generated'}), {args.cpus} CPUs")

    head, address = start_head(args.cpus, env, work / "head.log")
    try:
        # the driver's own CPU (start-up included), measured before this process joins the cluster
        # as a driver too: measured after, it read 5x higher, as if it counted llvm-mca's runs
        # (not pinned down)
        driver_cpu = []
        for _ in range(args.repeats):
            out = work / "driver.parquet"
            out.unlink(missing_ok=True)
            driver_cpu.append(timed([*CLI, "collect", *collect, "--quiet", "--out", str(out), "--ray", address], env)[1])
        joined = ray_cluster.connect(address)
        local, on_ray = LlvmMca("haswell", workers=args.cpus), LlvmMca("haswell", cluster=joined)
        times: dict[str, list[float]] = {"run local": [], "run ray": [], "collect local": [], "collect --ray ADDRESS": [],
                                         "collect --ray local": []}
        reference = None
        for _ in range(args.repeats):
            start = time.perf_counter()
            answers = local.run(blocks)
            times["run local"].append(time.perf_counter() - start)
            start = time.perf_counter()
            remote = on_ray.run(blocks)
            times["run ray"].append(time.perf_counter() - start)
            assert [r.cycles for r in remote] == [r.cycles for r in answers], "Ray's labels differ from local ones"
            for name, extra in (("collect local", []), ("collect --ray ADDRESS", ["--ray", address]),
                                ("collect --ray local", ["--ray", "local"])):
                out = work / f"{name.replace(' ', '_')}.parquet"
                out.unlink(missing_ok=True)
                run_env = env if "local" not in extra else {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
                times[name].append(timed([*CLI, "collect", *collect, "--quiet", "--out", str(out)], run_env)[0])
                frame = datasets.load(out)
                reference = frame if reference is None else reference
                assert frame.equals(reference), f"{name}: labels differ from the local collection's"
        import ray

        ray.shutdown()
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)

    medians = {name: statistics.median(t) for name, t in times.items()}
    figures = {"blocks": len(blocks), "cpus": args.cpus, "repeats": args.repeats, "seconds": times, "median": medians,
               "overhead": {"run": medians["run ray"] / medians["run local"] - 1,
                            "collect --ray ADDRESS": medians["collect --ray ADDRESS"] / medians["collect local"] - 1,
                            "collect --ray local": medians["collect --ray local"] / medians["collect local"] - 1},
               "driver_cpu_s": statistics.median(driver_cpu),
               "driver_ceiling_blocks_per_s": len(blocks) / statistics.median(driver_cpu),
               "blocks_per_s_per_core": {"local": len(blocks) / medians["run local"] / args.cpus,
                                         "ray": len(blocks) / medians["run ray"] / args.cpus}}
    for name, seconds in medians.items():
        print(f"  {name:<24} {seconds:7.2f} s  {len(blocks) / seconds:9,.0f} blocks/s")
    for name, value in figures["overhead"].items():
        print(f"  overhead {name:<24} {100 * value:+.1f}%")
    print(f"  blocks/s per core: local {figures['blocks_per_s_per_core']['local']:,.0f}, "
          f"Ray {figures['blocks_per_s_per_core']['ray']:,.0f}")
    print(f"  the collect driver's own CPU: {figures['driver_cpu_s']:.1f} s for {len(blocks):,} blocks, so one "
          f"driver feeds at most {figures['driver_ceiling_blocks_per_s']:,.0f} blocks/s however large the cluster")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
