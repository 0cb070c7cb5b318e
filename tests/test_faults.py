"""Fault injection against the real service over HTTP: llvm-mca hanging, crashing, crashing then
recovering; a slow huge request beside small ones; floods of unique and of long lines; the server
killed; two writers on one registry. Each fault here once stalled, starved or bloated the service."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.cli import CLI, script
from support.data import FIXTURES, GOOD, UNKNOWN
from support.servers import free_port, post, running, status
from support.stores import in_home, store_with

from surrogate_ops.programs import LlvmMca
from surrogate_ops.serving.server import wait_ready

pytestmark = pytest.mark.system  # the service, a registry's writers or predict, each in processes of its own
MODEL = "models:/svc-test@champion"
TIMEOUT = 3  # seconds: SURROGATE_OPS_MCA_TIMEOUT in these tests
HANG = "#!/bin/sh\nsleep 987654 &\nwait\n"  # a wrapper whose child would outlive a kill of the wrapper alone


def flaky(folder: Path) -> str:
    """llvm-mca, unless a fault is switched on: the file `hang` beside it makes it hang, `crash` crash."""
    real = LlvmMca().path
    return script(folder, "llvm-mca", f'#!/bin/sh\n[ -e "{folder}/hang" ] && {{ sleep 987654 & wait; }}\n'
                                      f'[ -e "{folder}/crash" ] && kill -SEGV $$\nexec {real} "$@"\n')


def timed(url: str, body: dict) -> tuple[float, int, object]:
    start = time.monotonic()
    code, answers = post(url, body)
    return time.monotonic() - start, code, answers


def orphans() -> list[str]:
    return subprocess.run(["pgrep", "-f", "sleep 987654"], capture_output=True, text=True).stdout.split()


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return store_with(tmp_path_factory, svc_test="llvm-mca-haswell")


@pytest.mark.slow
@pytest.mark.server
def test_a_hanging_llvm_mca_costs_a_request_its_timeout_at_most(home, tmp_path):
    hang = script(tmp_path, "llvm-mca", HANG)
    env = {"SURROGATE_OPS_LLVM_MCA": hang, "SURROGATE_OPS_MCA_TIMEOUT": str(TIMEOUT), "SURROGATE_OPS_MCA_RETRY": "60"}
    with running(home, "--model", MODEL, **env) as url:
        start = time.monotonic()
        assert status(url)["llvm_mca"].startswith("unavailable") and time.monotonic() - start < TIMEOUT + 2
        for body in ({"blocks": GOOD[:3]}, {"blocks": [GOOD[0], UNKNOWN]}, {"blocks": GOOD[:3], "exact": True},
                     {"blocks": [UNKNOWN] * 200}):
            elapsed, code, answers = timed(url, body)
            assert code == 200 and elapsed < TIMEOUT + 2, (elapsed, body)
            for block, answer in zip(body["blocks"], answers, strict=True):
                if block == UNKNOWN or body.get("exact"):
                    assert answer["error"].startswith("llvm-mca unavailable"), answer
                else:
                    assert answer["source"] == "surrogate"
        elapsed, code, text = timed(url, {"blocks": GOOD[:1], "mcpu": "znver1"})  # needs llvm-mca, which is down
        assert code == 503 and "llvm-mca is unavailable" in text and elapsed < TIMEOUT + 2
    time.sleep(1)
    assert not orphans(), "a hanging llvm-mca's children outlived its timeout"


@pytest.mark.slow
@pytest.mark.server
def test_llvm_mca_crashing_hanging_and_recovering(home, tmp_path):
    """Crashing at start-up, then fixed; later hanging mid-run, then fixed: each failure is remembered
    for SURROGATE_OPS_MCA_RETRY seconds only, a timed-out chunk is not bisected into more timeouts,
    and the answers after recovery are llvm-mca's own."""
    mca = flaky(tmp_path)
    (tmp_path / "crash").touch()
    env = {"SURROGATE_OPS_LLVM_MCA": mca, "SURROGATE_OPS_MCA_TIMEOUT": str(TIMEOUT), "SURROGATE_OPS_MCA_RETRY": "2",
           "SURROGATE_OPS_MCA_CHUNK": "8"}
    real = LlvmMca().run([UNKNOWN, *GOOD])
    with running(home, "--model", MODEL, **env) as url:
        code, answers = post(url, {"blocks": [GOOD[0], UNKNOWN]})
        assert code == 200 and answers[0]["source"] == "surrogate" and "llvm-mca" in answers[1]["error"]
        assert post(url, {"blocks": GOOD[:1], "mcpu": "znver1"})[0] == 503
        (tmp_path / "crash").unlink()
        time.sleep(2.5)
        code, answers = post(url, {"blocks": [GOOD[0], UNKNOWN]})
        assert code == 200 and answers[1]["cycles"] == real[0].cycles and answers[1]["source"] == "llvm-mca"
        code, text = post(url, {"blocks": GOOD[:1], "mcpu": "foo"})
        assert code == 400 and "does not know -mcpu=foo" in text

        (tmp_path / "hang").touch()
        elapsed, code, answers = timed(url, {"blocks": GOOD * 8, "exact": True})  # 8 chunks of 8 blocks
        assert code == 200 and elapsed < TIMEOUT + 2, elapsed
        assert all("timed out" in a["error"] or "unavailable" in a["error"] for a in answers), answers
        (tmp_path / "hang").unlink()
        time.sleep(2.5)
        code, answers = post(url, {"blocks": GOOD, "exact": True})
        assert code == 200 and [a["cycles"] for a in answers] == [r.cycles for r in real[1:]]
    time.sleep(1)
    assert not orphans()


def long_block(seed: int) -> str:
    """40 instructions (under the model's limit, so that only exact sends it to llvm-mca), distinct per seed."""
    return "\n".join(f"addq ${seed * 40 + k}, %r{8 + k % 8}\nimulq %r{8 + k % 8}, %rax" for k in range(20))


@pytest.mark.slow
@pytest.mark.server
def test_a_huge_request_does_not_stall_small_ones(home):
    big = {"blocks": [long_block(i) for i in range(1200)], "exact": True}
    with running(home, "--model", MODEL) as url:
        post(url, {"blocks": GOOD})  # warm
        with ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            huge = pool.submit(timed, url, big)
            time.sleep(1)
            small = [timed(url, {"blocks": GOOD[i % 5:i % 5 + 2]}) for i in range(20)]
            fallback = timed(url, {"blocks": [UNKNOWN]})  # needs llvm-mca: waits for a running chunk, not the backlog
            fallback_done = time.monotonic() - started
            big_elapsed, big_code, big_answers = huge.result()
    assert big_code == 200 and all("cycles" in a for a in big_answers)
    assert all(code == 200 for _, code, _ in small) and max(t for t, _, _ in small) < 1.0, [t for t, _, _ in small]
    assert fallback[1] == 200 and fallback[2][0]["source"] == "llvm-mca"
    assert fallback_done < big_elapsed, (fallback_done, big_elapsed)


@pytest.mark.slow
@pytest.mark.server
def test_floods_of_unique_and_of_long_lines_stay_bounded_in_memory(home):
    with running(home, "--model", MODEL, SURROGATE_OPS_MAX_BLOCKS="4096") as url:
        for _ in range(5):
            post(url, {"blocks": GOOD * 50})
        warm = status(url)["memory_mb"]
        line = "addq " + "%rax, " * 650_000 + "%rbx"  # one 3.9 MB line
        for _ in range(20):
            code, answers = post(url, {"blocks": [line]})
            assert code == 200 and "over the limit of 256" in answers[0]["error"] and len(json.dumps(answers)) < 300
        for k in range(36):  # 147,456 distinct lines: past every line cache's bound
            code, answers = post(url, {"blocks": [f"addq ${k * 4096 + i}, %rax" for i in range(4096)]})
            assert code == 200 and answers[-1]["source"] == "surrogate"
        after = status(url)["memory_mb"]
    assert after < 1.5 * warm, (warm, after)


@pytest.mark.slow
@pytest.mark.server
def test_killing_the_server_frees_its_port(home):
    port = free_port()
    with running(home, "--model", MODEL, port=port) as url:
        os.kill(url.process.pid, signal.SIGKILL)  # the server only, as `kill -9 <pid>` would
        url.process.wait()
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the BentoML worker outlived its server and holds the port"
                    time.sleep(0.5)
    with running(home, "--model", MODEL, port=port) as url:  # a restart on the same port
        assert post(url, {"blocks": GOOD[:1]})[0] == 200


WRITER = """
import sys, time
from pathlib import Path
from surrogate_ops.registry import versions, tracking
from surrogate_ops.runtime.modeldir import ModelDir
tracking.configure()
model = ModelDir.open(versions.BUNDLED)
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.01)
with tracking.start_run(run_name="writer"):
    r = versions.log_model(model, example=["addq %rax, %rbx"], name="raced",
                           tags={f"t{k}": k for k in range(int(sys.argv[1]))})
print(r.version, ",".join(r.aliases))
"""


@pytest.mark.slow
def test_writers_side_by_side_leave_the_aliases_as_the_rule_says(home, tmp_path):
    """Four registrations of one name at once (the later ones with fewer tags to write, so that an
    earlier version's alias write tends to land last): challenger ends on the newest version,
    champion on the oldest. Each writer reports the aliases its version held when it settled them:
    a middle version may have been the newest then (challenger, since moved on), never champion."""
    env = {**os.environ, "SURROGATE_OPS_HOME": str(home)}
    start = time.time() + 8
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tags), str(start)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for tags in (60, 40, 20, 0)]
    said = {}
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err[-2000:]
        version, _, aliases = out.strip().splitlines()[-1].partition(" ")
        said[version] = set(filter(None, aliases.split(",")))
    from surrogate_ops.registry import versions

    with in_home(home):
        newest, oldest = str(max(map(int, said))), str(min(map(int, said)))
        assert versions.alias_version("raced", "challenger") == newest
        assert versions.alias_version("raced", "champion") == oldest
    assert said[newest] >= {"challenger"} and said[oldest] >= {"champion"}
    assert all(aliases <= {"challenger"} for version, aliases in said.items() if version not in (newest, oldest)), said


@pytest.mark.server
def test_client_errors_are_one_line_in_the_log(home):
    with running(home, "--model", MODEL) as url:
        assert post(url, b"{not json")[0] == 400
        assert post(url, {"blocks": GOOD[:1], "mcpu": "pentium9"})[0] == 400
        assert post(url, {"blocks": "addq %rax, %rbx"})[0] == 400
        wait_ready(url)
        log = url.log.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


def test_sigterm_to_the_process_group_ends_predict(tmp_path):
    """What `timeout`, systemd and CI runners send: SIGTERM to predict and its encoding workers at
    once. A worker killed while it held the pool's queue lock once left the parent waiting for it
    for ever (issue 29): here it exits within seconds, interrupted, leaving no process behind. The
    signal comes once the first chunk is answered, so the worker pool is up (idle or encoding)."""
    blocks = [b for b in (FIXTURES / "blocks.s").read_text().split("\n\n") if b.strip()]
    path = tmp_path / "many.s"
    path.write_text("".join(f"{blocks[k % len(blocks)]}\naddq ${k}, %rax\n\n" for k in range(400_000)))
    env = {**os.environ, "SURROGATE_OPS_HOME": str(tmp_path)}
    for delay in (0.0, 0.7, 1.4):
        out = tmp_path / "out.csv"
        with open(out, "w") as stdout:
            proc = subprocess.Popen([*CLI, "predict", "--input", str(path)],
                                    stdout=stdout, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        deadline = time.monotonic() + 120
        while out.stat().st_size < 4096 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the first chunk's rows: its 50,000 blocks went through the worker pool
        assert proc.poll() is None, "predict finished before the signal: make the input larger"
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGTERM)
        stopped = time.monotonic()
        try:
            _, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"predict still running 10 s after SIGTERM to its process group ({delay} s after its first rows)")
        elapsed = time.monotonic() - stopped
        left = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
        for pid in left:
            os.kill(int(pid), signal.SIGKILL)
        assert proc.returncode == 130 and "interrupted" in stderr, (proc.returncode, stderr[-500:])
        assert elapsed < 5 and not left, (elapsed, left)
