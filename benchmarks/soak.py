"""The service under faults and load: does it hold? Issue 15's targets, measured on the real server.

Phases (all by default; `--phases` picks):
  stall  small requests (1-4 blocks, surrogate) while a 4,096-block exact request runs beside them:
         their p50/p99 (target: p99 under 50 ms), and a small llvm-mca request's latency.
  hang   llvm-mca hangs (a stand-in that never returns) at SURROGATE_OPS_MCA_TIMEOUT=--timeout: each
         kind of request's latency (target: timeout + 1 s at most).
  flood  RSS warm, after 40 requests of one 3.9 MB line, after 150,000 distinct lines (target: within
         1.5x of warm).
  slow   128 blocks of about a second of llvm-mca each (512 divides) in one exact request, and a 1-block
         exact request sent beside them at the default timeout (30 s): its wait (target: the timeout
         + 1 s at most) and how many of the 128 were answered (issue 29).
  body   a body announcing 600 MB, and 40 MB sent in chunks without a length: the status, the time
         to the refusal and the worker's RSS against warm (target: within 1.2x).
  broken llvm-mca answers --version but crashes, then hangs, on every simulation: each request's
         latency and llvm-mca calls (once 127 calls for 64 blocks), and what /ops/healthz says.
  soak   --clients clients for --minutes, requests of 1-256 generated blocks (some sent to llvm-mca,
         some exact), llvm-mca made to hang for --fault-seconds in the middle: throughput, p50/p99,
         RSS over time, errors, and every answer checked against the same block's answer from the
         quiet server (target: none lost or wrong; during the fault only llvm-mca's answers may be
         errors). Plot: soak.png beside --out.

Blocks are generated with held-out seeds (no BHive needed); the server is `surrogate-ops serve` with
the bundled surrogates in a scratch store, its llvm-mca a pass-through wrapper the fault switches.

    python benchmarks/soak.py [--minutes 10] [--clients 8] [--out soak.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import post_json

from surrogate_ops.blocks.generate import PROBE_SEED, generate
from surrogate_ops.llvm_tools import find_tool
from surrogate_ops.programs import LlvmMca
from surrogate_ops.serving.server import wait_ready

UNKNOWN = "pclmulqdq $0, %xmm1, %xmm2\naddq %rax, %rbx"  # outside the vocabulary: llvm-mca answers


def post(url: str, body: dict, timeout: float = 300) -> tuple[int, object]:
    status, raw = post_json(url, "/predict", body, timeout)
    return status, json.loads(raw) if status == 200 else raw.decode()[:300]


def timed(url: str, body: dict) -> tuple[float, int, object]:
    start = time.perf_counter()
    code, answers = post(url, body)
    return time.perf_counter() - start, code, answers


def status(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/ops/healthz", timeout=120) as response:
        return json.loads(response.read())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Server:
    """`surrogate-ops serve` in a scratch store, llvm-mca behind a wrapper: `fault("hang")` makes it hang."""

    def __init__(self, folder: Path, **env: str):
        self.folder = folder
        self.wrapper = folder / "llvm-mca"
        real = find_tool("llvm-mca")
        if not self.wrapper.exists():
            self.wrapper.write_text(f'#!/bin/sh\n[ -e "{folder}/hang" ] && {{ sleep 987654 & wait; }}\n'
                                    f'[ -e "{folder}/crash" ] && kill -SEGV $$\nexec {real} "$@"\n')
            self.wrapper.chmod(0o755)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(folder / "serve.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "surrogate_ops", "serve", "--port", str(port)],
                                     start_new_session=True, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "SURROGATE_OPS_HOME": str(folder / "home"),
                                          "SURROGATE_OPS_LLVM_MCA": str(self.wrapper), **env})
        wait_ready(self.url, timeout=300)

    def fault(self, kind: str | None) -> None:
        for name in ("hang", "crash"):
            (self.folder / name).unlink(missing_ok=True)
        if kind:
            (self.folder / kind).touch()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


def stall(folder: Path, args) -> dict:
    with Server(folder / "stall") as server:
        lines = [line for block in generate(14000, seed=PROBE_SEED + 51) for line in block.split("\n")]
        big = {"blocks": ["\n".join(lines[40 * k:40 * k + 40]) for k in range(4096)], "exact": True}  # 40 each
        small = generate(400, seed=PROBE_SEED + 52)
        post(server.url, {"blocks": small})
        quiet = [timed(server.url, {"blocks": small[i:i + 1 + i % 4]})[0] for i in range(200)]
        with ThreadPoolExecutor(1) as pool:
            started = time.perf_counter()
            job = pool.submit(timed, server.url, big)
            time.sleep(1)
            beside = []
            while not job.done() and len(beside) < 2000:
                i = len(beside) % 396
                beside.append(timed(server.url, {"blocks": small[i:i + 1 + i % 4]})[0])
            fallback = timed(server.url, {"blocks": [UNKNOWN]})[0]
            big_seconds, big_code, _ = job.result()
        out = {"quiet_p50_ms": 1e3 * percentile(quiet, 0.5), "quiet_p99_ms": 1e3 * percentile(quiet, 0.99),
               "beside_p50_ms": 1e3 * percentile(beside, 0.5), "beside_p99_ms": 1e3 * percentile(beside, 0.99),
               "beside_max_ms": 1e3 * max(beside), "beside_requests": len(beside), "big_seconds": big_seconds,
               "big_status": big_code, "small_llvm_mca_request_ms": 1e3 * fallback,
               "elapsed_s": time.perf_counter() - started}
        print(f"stall: small requests p50 {out['beside_p50_ms']:.1f} ms, p99 {out['beside_p99_ms']:.1f} ms "
              f"(quiet: {out['quiet_p50_ms']:.1f} / {out['quiet_p99_ms']:.1f}) over {len(beside)} requests beside a "
              f"4,096-block exact request ({big_seconds:.1f} s); a 1-block llvm-mca request {1e3 * fallback:.0f} ms")
        return out


def hang(folder: Path, args) -> dict:
    with Server(folder / "hang", SURROGATE_OPS_MCA_TIMEOUT=str(args.timeout), SURROGATE_OPS_MCA_RETRY="5") as server:
        good = generate(8, seed=PROBE_SEED + 53)
        server.fault("hang")
        kinds = {"surrogate only": {"blocks": good}, "mixed": {"blocks": [*good, UNKNOWN]},
                 "exact": {"blocks": good, "exact": True}, "exact, 1,000 blocks": {"blocks": good * 125, "exact": True},
                 "no surrogate (znver1)": {"blocks": good, "mcpu": "znver1"}}
        out = {}
        for round_ in range(3):  # the first meets the hang, the next within the retry window, the last after it
            for name, body in kinds.items():
                seconds, code, _ = timed(server.url, body)
                out.setdefault(name, []).append((round(seconds, 2), code))
            start = time.perf_counter()
            status(server.url)
            out.setdefault("healthz", []).append((round(time.perf_counter() - start, 2), 200))
            time.sleep(3 if round_ == 0 else 6)
        worst = max(s for runs in out.values() for s, _ in runs)
        print(f"hang (timeout {args.timeout:g} s): worst request {worst:.2f} s; " +
              "; ".join(f"{k}: {', '.join(f'{s:.2f} s/{c}' for s, c in v)}" for k, v in out.items()))
        return {"timeout": args.timeout, "worst_seconds": worst, "requests": out}


def warmed(server: Server, seed: int) -> float:
    """The server's RSS in MB after 2,000 ordinary blocks of held-out seed `seed`, 100 a request."""
    normal = generate(2000, seed=seed)
    for i in range(0, 2000, 100):
        post(server.url, {"blocks": normal[i:i + 100]})
    return status(server.url)["memory_mb"]


def flood(folder: Path, args) -> dict:
    with Server(folder / "flood") as server:
        warm = warmed(server, PROBE_SEED + 54)
        line = "addq " + "%rax, " * 650_000 + "%rbx"
        sizes = [len(json.dumps(post(server.url, {"blocks": [line]})[1])) for _ in range(40)]
        after_long = status(server.url)["memory_mb"]
        for k in range(37):
            post(server.url, {"blocks": [f"addq ${k * 4096 + i}, %r{8 + i % 8}" for i in range(4096)]})
        after_unique = status(server.url)["memory_mb"]
        out = {"warm_mb": warm, "after_long_lines_mb": after_long, "after_unique_lines_mb": after_unique,
               "ratio": max(after_long, after_unique) / warm, "answer_bytes_for_a_3.9MB_line": max(sizes)}
        print(f"flood: RSS warm {warm:.0f} MB, after 40 lines of 3.9 MB {after_long:.0f} MB, after 151,552 distinct "
              f"lines {after_unique:.0f} MB ({out['ratio']:.2f}x warm); the answer to a 3.9 MB line: {max(sizes)} bytes")
        return out


def slow(folder: Path, args) -> dict:
    with Server(folder / "slow") as server:
        blocks = ["\n".join([f"addq ${k}, %r8", *["divq %rcx"] * 511]) for k in range(128)]
        with ThreadPoolExecutor(1) as pool:
            job = pool.submit(timed, server.url, {"blocks": blocks, "exact": True})
            time.sleep(2)
            waited, code, answers = timed(server.url, {"blocks": ["imulq $13, %rcx, %rdx"], "exact": True})
            heavy_seconds, heavy_code, heavy = job.result()
        answered = sum("cycles" in a for a in heavy) if heavy_code == 200 else 0
        out = {"timeout": 30.0, "beside_seconds": waited, "beside_status": code,
               "beside_answered": code == 200 and "cycles" in answers[0], "slow_seconds": heavy_seconds,
               "slow_answered": answered}
        print(f"slow: a 1-block exact request beside 128 one-second blocks answered in {waited:.2f} s (timeout 30 s); "
              f"the 128 took {heavy_seconds:.1f} s, {answered} answered")
        return out


def _raw(url: str, headers: dict[str, str], chunks) -> tuple[int, float]:
    """POST /predict with these headers and body pieces, sent until the server answers; its status
    and seconds to it."""
    import http.client
    from urllib.parse import urlparse

    address = urlparse(url)
    started = time.perf_counter()
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    connection.putrequest("POST", "/predict")
    for name, value in headers.items():
        connection.putheader(name, value)
    connection.endheaders()
    try:
        for piece in chunks:
            connection.send(piece)
    except OSError:
        pass  # refused and closed before the body ended
    code = connection.getresponse().status
    return code, time.perf_counter() - started


def body(folder: Path, args) -> dict:
    with Server(folder / "body") as server:
        warm = warmed(server, PROBE_SEED + 56)
        piece = b"a" * (1 << 20)
        announced = _raw(server.url, {"Content-Type": "application/json", "Content-Length": str(600 << 20)},
                         (piece for _ in range(600)))
        after_announced = status(server.url)["memory_mb"]
        chunked = _raw(server.url, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                       (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(40)))
        after_chunked = status(server.url)["memory_mb"]
        out = {"warm_mb": warm, "announced_600MB": {"status": announced[0], "seconds": announced[1], "mb": after_announced},
               "chunked_40MB": {"status": chunked[0], "seconds": chunked[1], "mb": after_chunked},
               "ratio": max(after_announced, after_chunked) / warm}
        print(f"body: 600 MB announced -> {announced[0]} in {announced[1]:.2f} s; 40 MB chunked -> {chunked[0]} in "
              f"{chunked[1]:.2f} s; RSS warm {warm:.0f} MB, after {max(after_announced, after_chunked):.0f} MB "
              f"({out['ratio']:.2f}x)")
        return out


def broken(folder: Path, args) -> dict:
    calls = folder / "broken" / "calls"
    real = find_tool("llvm-mca")
    out: dict = {}
    for fault, action in (("crash", "kill -SEGV $$"), ("hang", "sleep 987654")):
        where = folder / "broken" / fault
        where.mkdir(parents=True)
        wrapper = where / "llvm-mca"
        wrapper.write_text(f'#!/bin/sh\ncase "$*" in *-iterations=*) echo run >> {calls}.{fault}; {action};; esac\n'
                           f'exec {real} "$@"\n')
        wrapper.chmod(0o755)
        with Server(where, SURROGATE_OPS_LLVM_MCA=str(wrapper), SURROGATE_OPS_MCA_TIMEOUT=str(args.timeout),
                    SURROGATE_OPS_MCA_RETRY="600") as server:
            runs = []
            for size in (64, 512, 64):
                seconds, code, _ = timed(server.url, {"blocks": [f"addq ${k}, %r{8 + k % 8}" for k in range(size)],
                                                      "exact": True})
                made = Path(f"{calls}.{fault}").read_text().count("run") if Path(f"{calls}.{fault}").exists() else 0
                runs.append({"blocks": size, "seconds": round(seconds, 2), "status": code, "llvm_mca_calls_so_far": made})
            out[fault] = {"requests": runs, "healthz": status(server.url)["llvm_mca"]}
        print(f"broken ({fault} on every simulation): " + "; ".join(
            f"{r['blocks']} blocks {r['seconds']:.2f} s ({r['llvm_mca_calls_so_far']} calls so far)" for r in runs)
            + f"; healthz: {out[fault]['healthz'][:90]}")
    return out


def soak(folder: Path, args) -> dict:
    with Server(folder / "soak", SURROGATE_OPS_MCA_TIMEOUT=str(args.timeout), SURROGATE_OPS_MCA_RETRY="5") as server:
        pool = generate(3000, seed=PROBE_SEED + 55)
        reference: dict[str, dict] = {}
        for i in range(0, len(pool), 256):  # the quiet server's answers, one request at a time
            chunk = pool[i:i + 256]
            reference.update(zip(chunk, post(server.url, {"blocks": chunk})[1], strict=True))
        pool = [block for block in pool if reference[block].get("source") == "surrogate"]
        duration, middle = 60 * args.minutes, 30 * args.minutes
        fault_window = (middle, middle + args.fault_seconds)
        records, fresh, memory, stop = [], [], [], threading.Event()
        start = time.perf_counter()

        def client(seed: int) -> None:
            """Requests of 1-256 pool blocks (the surrogate's; their answers known), a quarter of them
            with one new block over the model's length limit (llvm-mca's, never asked before: the
            answer cache cannot serve it), 3% exact requests of new blocks."""
            rng = random.Random(seed)
            for n in itertools.count():
                if stop.is_set():
                    return
                size = rng.choice([1, 1, 2, 4, 8, 16, 64, 256])
                new = PROBE_SEED + 1000 + 100_000 * seed + n
                exact = rng.random() < 0.03
                if exact:
                    blocks = generate(min(size, 16), seed=new)
                else:
                    blocks = rng.sample(pool, size) + ([long_block(new)] if rng.random() < 0.25 else [])
                sent = time.perf_counter() - start
                try:
                    code, answers = post(server.url, {"blocks": blocks, "exact": exact}, timeout=120)
                except OSError as exc:
                    code, answers = 0, str(exc)
                verdict = "lost" if not isinstance(answers, list) or len(answers) != len(blocks) else "ok"
                if verdict == "ok":
                    for block, answer in zip(blocks, answers, strict=True):
                        if block in reference and not exact:
                            want = reference[block]
                            if answer.get("source") != "surrogate" or abs(answer["cycles"] - want["cycles"]) > 1e-4 * want["cycles"]:
                                verdict = "wrong"
                        else:
                            fresh.append((sent, block, answer))
                records.append((sent, time.perf_counter() - start - sent, len(blocks), exact, code, verdict))

        def watch() -> None:
            faulted = False
            while not stop.is_set():
                now = time.perf_counter() - start
                if not faulted and now >= fault_window[0]:
                    server.fault(args.fault)
                    faulted = True
                if faulted and now >= fault_window[1]:
                    server.fault(None)
                memory.append((now, status(server.url)["memory_mb"]))
                stop.wait(5)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        threads.append(threading.Thread(target=watch))
        for t in threads:
            t.start()
        time.sleep(duration)
        stop.set()
        for t in threads:
            t.join()
        server.fault(None)
        final = status(server.url)
    return _report(records, _check_fresh(fresh, fault_window, args.timeout), memory, final, fault_window, duration, args)


def long_block(seed: int) -> str:
    """A new block of 70 instructions: over the model's 64, so llvm-mca answers it."""
    lines = [line for block in generate(12, seed=seed) for line in block.split("\n")]
    while len(lines) < 70:
        lines += lines
    return "\n".join(lines[:70])


def _check_fresh(fresh: list, fault_window: tuple[float, float], timeout: float) -> dict:
    """llvm-mca's answers checked against llvm-mca run here afterwards: "ok", "wrong", or an error,
    allowed only for a request sent while llvm-mca was down (the fault, plus the time to notice it
    is back)."""
    truth = LlvmMca().run([block for _, block, _ in fresh])
    verdicts = {"ok": 0, "wrong": 0, "mca-error in fault": 0, "mca-error outside fault": 0}
    for (sent, _, answer), want in zip(fresh, truth, strict=True):
        if "cycles" in answer:
            verdicts["ok" if answer["cycles"] == want.cycles else "wrong"] += 1
        elif want.ok and fault_window[0] - timeout <= sent <= fault_window[1] + 5 + timeout:
            verdicts["mca-error in fault"] += 1
        else:
            verdicts["mca-error outside fault" if want.ok else "ok"] += 1
    return verdicts


def _report(records, fresh, memory, final, fault_window, duration, args) -> dict:
    latencies = [r[1] for r in records]
    small = [r[1] for r in records if r[2] <= 4 and not r[3]]
    inside = [r for r in records if fault_window[0] <= r[0] <= fault_window[1] + args.timeout]
    verdicts = {v: sum(r[5] == v for r in records) for v in ("ok", "lost", "wrong")}
    out = {"requests": len(records), "blocks_per_s": sum(r[2] for r in records) / duration,
           "p50_ms": 1e3 * percentile(latencies, 0.5), "p99_ms": 1e3 * percentile(latencies, 0.99),
           "small_p50_ms": 1e3 * percentile(small, 0.5), "small_p99_ms": 1e3 * percentile(small, 0.99),
           "max_ms_in_fault": 1e3 * max((r[1] for r in inside), default=0.0), "requests_checked": verdicts,
           "llvm_mca_blocks_checked": fresh, "non_200": sum(r[4] != 200 for r in records), "memory_mb": memory,
           "rss_start_mb": memory[0][1], "rss_max_mb": max(m for _, m in memory), "rss_end_mb": memory[-1][1],
           "llvm_mca_cache": final["llvm_mca_cache"], "answered": final["answered"], "fault": args.fault,
           "fault_window_s": fault_window}
    print(f"soak: {args.clients} clients, {duration / 60:g} min, llvm-mca {args.fault} from {fault_window[0]:.0f} s "
          f"to {fault_window[1]:.0f} s: {out['requests']:,} requests, {out['blocks_per_s']:,.0f} blocks/s, "
          f"p50 {out['p50_ms']:.0f} ms, p99 {out['p99_ms']:.0f} ms (requests of 1-4 blocks: {out['small_p50_ms']:.0f} / "
          f"{out['small_p99_ms']:.0f} ms); worst during the fault {out['max_ms_in_fault']:.0f} ms; requests {verdicts} "
          f"(surrogate answers checked), non-200 {out['non_200']}; llvm-mca's blocks {fresh}; RSS "
          f"{out['rss_start_mb']:.0f} -> max {out['rss_max_mb']:.0f} -> end {out['rss_end_mb']:.0f} MB")
    return {**out, "timeline": [(round(r[0], 2), round(r[1], 4), r[2], r[5]) for r in records]}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    soaked = result["soak"]
    timeline = soaked["timeline"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.scatter([t for t, *_ in timeline], [1e3 * s for _, s, *_ in timeline], s=2, alpha=0.4)
    ax1.set_yscale("log")
    ax1.set_ylabel("request latency (ms)")
    ax2.plot(*zip(*soaked["memory_mb"], strict=True))
    ax2.set_ylabel("server RSS (MB)")
    ax2.set_xlabel("seconds")
    for ax in (ax1, ax2):
        ax.axvspan(*soaked["fault_window_s"], color="red", alpha=0.15, label=f"llvm-mca {soaked['fault']}")
    ax1.legend(loc="upper left")
    ax1.set_title(f"soak: {soaked['requests']:,} requests, {soaked['blocks_per_s']:,.0f} blocks/s, "
                  f"requests {soaked['requests_checked']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phases", default="stall,hang,flood,slow,body,broken,soak")
    parser.add_argument("--minutes", type=float, default=10.0, help="soak duration")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--fault", choices=("hang", "crash"), default="hang")
    parser.add_argument("--fault-seconds", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=5.0, help="SURROGATE_OPS_MCA_TIMEOUT for hang and soak")
    parser.add_argument("--out", type=Path, default=Path("soak.json"))
    args = parser.parse_args()
    result = {}
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        for phase in args.phases.split(","):
            folder = Path(tmp) / phase
            folder.mkdir()
            result[phase] = globals()[phase](Path(tmp), args)
    args.out.write_text(json.dumps(result, indent=1))
    if "soak" in result:
        plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out}" + (f" and {args.out.with_suffix('.png')}" if "soak" in result else ""))


if __name__ == "__main__":
    main()
