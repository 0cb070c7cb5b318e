"""Smoke test of a container image of the service against the same models served on this host.

Starts IMAGE with podman (`surrogate_ops.serving.containers.started`), waits for /ops/healthz, reads which
registered versions it carries, serves those versions here with `surrogate-ops serve` (same store,
same llvm-mca), and sends both the same blocks: held-out generated blocks (a seed no training saw)
in requests of 256, blocks the surrogate must not answer (a token outside its vocabulary, a block
over its length limit, another CPU), an unreadable block, and an exact request. Every answer must
match: source, reason and llvm-mca's cycles exactly, the surrogate's cycles to `--rtol` relative
[default 1e-6: the image pins the ONNX Runtime and numpy of this host]. Then it times both on the same blocks, in turns.

    python deploy/smoke_test.py IMAGE [--blocks 2048] [--repeats 3] [--json smoke.json]

Exit status 0 when every answer matches; prints the figures (start to first answer, blocks/s in the
container and on the host, their ratio) and writes them to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from surrogate_ops.serving import containers
from surrogate_ops.blocks.generate import generate
from surrogate_ops.config import Source
from surrogate_ops.serving.server import wait_ready

UNKNOWN = "pclmulqdq $0, %xmm1, %xmm2\naddq %rax, %rbx"  # a token outside the bundled vocabularies
LONG = "\n".join(["addq %rax, %rbx", "imulq %rcx, %rdx"] * 40)  # 80 instructions, over the models' 64
UNREADABLE = "movq (%rdi), %rax\n.byte 1"  # a directive: not an instruction block
SEED = 9104  # generator seed no training or test used
REQUEST = 256


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_raw(url: str, body: dict) -> tuple[int, object]:
    request = urllib.request.Request(f"{url}/predict", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def post(url: str, body: dict) -> list[dict]:
    code, answer = post_raw(url, body)
    if code != 200:
        raise SystemExit(f"{url}/predict answered {code}: {str(answer)[:500]}")
    return answer


@contextmanager
def host_service(uris: list[str], log: Path):
    """`surrogate-ops serve` of the same registered versions on this host."""
    port = free_port()
    command = [sys.executable, "-m", "surrogate_ops", "serve", "--port", str(port),
               *[arg for uri in uris for arg in ("--model", uri)]]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(url, timeout=180)
        except OSError:
            raise SystemExit(f"the host service did not come up:\n{log.read_text()[-3000:]}") from None
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def answers(url: str, blocks: list[str], mcpu: str, clients: int = 2) -> list[dict]:
    chunks = [blocks[i:i + REQUEST] for i in range(0, len(blocks), REQUEST)]
    with ThreadPoolExecutor(clients) as pool:
        return [a for part in pool.map(lambda c: post(url, {"blocks": c, "mcpu": mcpu}), chunks) for a in part]


def differences(container: list[dict], host: list[dict]) -> tuple[list[str], float]:
    """What differs between two answer lists, and the largest relative difference of surrogate cycles."""
    problems, worst = [], 0.0
    for i, (a, b) in enumerate(zip(container, host, strict=True)):
        if (a.get("source"), a.get("reason"), a.get("error")) != (b.get("source"), b.get("reason"), b.get("error")):
            problems.append(f"block {i}: container {a} vs host {b}")
        elif a.get("source") == Source.SURROGATE:
            worst = max(worst, abs(a["cycles"] - b["cycles"]) / max(abs(b["cycles"]), 1e-9))
        elif a.get("cycles") != b.get("cycles"):
            problems.append(f"block {i}: llvm-mca cycles {a.get('cycles')} in the container, {b.get('cycles')} here")
    return problems, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("image")
    parser.add_argument("--blocks", type=int, default=2048, help="held-out generated blocks to compare and time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--rtol", type=float, default=1e-6,
                        help="largest relative difference of surrogate cycles allowed (another architecture's ONNX "
                             "Runtime kernels round differently)")
    parser.add_argument("--ready-timeout", type=float, default=180,
                        help="seconds the image may take to answer /ops/healthz (an emulated arm64 image: minutes)")
    args = parser.parse_args()

    held_out = generate(args.blocks, seed=SEED)
    start = time.time()
    with containers.started(args.image, free_port(), timeout=args.ready_timeout) as (image_url, ready_s):
        first = post(image_url, {"blocks": [held_out[0]]})
        first_answer_s = time.time() - start
        status = json.loads(urllib.request.urlopen(f"{image_url}/ops/healthz", timeout=30).read())
        carried = {mcpu: s["model_version"] for mcpu, s in status["surrogates"].items()}
        mcpu = status["mcpu"]
        print(f"{args.image}: ready in {ready_s:.1f} s, first answer {first_answer_s:.1f} s after `podman run`; "
              f"carries {carried}; llvm-mca {status['llvm_mca']}", flush=True)
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"smoke-host-{os.getpid()}.log"
        with host_service([f"models:/{version}" for version in carried.values()], log) as host_url:
            problems, worst = [], 0.0
            odd = [UNKNOWN, LONG, held_out[1]]
            for body in ({"blocks": odd, "mcpu": mcpu}, {"blocks": odd[:1], "mcpu": "znver1"},
                         {"blocks": held_out[:8], "mcpu": mcpu, "exact": True}):
                found, rel = differences(post(image_url, body), post(host_url, body))
                problems, worst = problems + found, max(worst, rel)
            (code, inside), (host_code, outside) = [post_raw(url, {"blocks": [UNREADABLE, held_out[2]], "mcpu": mcpu})
                                                    for url in (image_url, host_url)]
            if code != host_code or (code != 200 and inside != outside):
                problems.append(f"an unreadable block: container {code} {inside} vs host {host_code} {outside}")
            elif code == 200:
                found, rel = differences(inside, outside)
                problems, worst = problems + found, max(worst, rel)
            in_image, on_host = answers(image_url, held_out, mcpu), answers(host_url, held_out, mcpu)
            found, rel = differences(in_image, on_host)
            problems, worst = problems + found, max(worst, rel)
            fallback = sum(a["source"] == Source.LLVM_MCA for a in on_host)
            rates: dict[str, list[float]] = {"container": [], "host": []}
            for _ in range(args.repeats):
                for name, url in (("container", image_url), ("host", host_url)):
                    t = time.perf_counter()
                    answers(url, held_out, mcpu)
                    rates[name].append(len(held_out) / (time.perf_counter() - t))
    report = {"image": args.image, "size_mb": containers.size_mb(args.image), "ready_s": ready_s,
              "first_answer_s": first_answer_s, "carries": carried, "blocks": len(held_out),
              "fallback_blocks": fallback, "max_rel_diff_surrogate": worst, "mismatches": len(problems),
              "container_blocks_per_s": statistics.median(rates["container"]),
              "host_blocks_per_s": statistics.median(rates["host"])}
    report["container_vs_host"] = report["container_blocks_per_s"] / report["host_blocks_per_s"]
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if problems or worst > args.rtol or first[0].get("cycles") is None:
        raise SystemExit("the container's answers differ from the host service's:\n" + "\n".join(problems[:20])
                         + f"\nlargest relative difference of surrogate cycles: {worst:.3g}")


if __name__ == "__main__":
    main()
