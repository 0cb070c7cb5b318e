"""No block can harm another (issue 29), against the real llvm-mca and the real service over HTTP:
a hostile block between a victim's blocks, in one request, across concurrent requests and in a
file; one client's slow blocks beside another's request; a body too large to read; loosely typed
fields; an llvm-mca that answers --version but crashes on every simulation; the worker killed
outright while llvm-mca runs."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import pytest
from support.cli import CLI, script
from support.data import GOOD
from support.servers import post, running, status
from support.stores import store_with

from surrogate_ops.blocks.asm import BlockError, normalize_block
from surrogate_ops.programs import LlvmMca

MODEL = "models:/iso-test@champion"
# statements that once passed the gate because their first word did not end in ':'
HOSTILE = ["a:.if 0", "a:.intel_syntax noprefix", "a:.code16", "a:.fill 100, 1, 0x90", "a:.p2align 30",
           "addq %rax, %rbx\nb:.if 0", "lock a:.if 0", "a:", "x.y %rax", "a=5"]
VICTIMS = ["addq $11, %rbx", "imulq $13, %rcx, %rdx", "addq $17, %rsi", *GOOD[:2]]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return store_with(tmp_path_factory, iso_test="llvm-mca-haswell")


@pytest.fixture(scope="module")
def service(home):
    with running(home, "--model", MODEL) as url:
        yield url


def alone(blocks: list[str]) -> list[float]:
    return [LlvmMca(workers=1).run([block])[0].cycles for block in blocks]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_the_gate_reads_the_statement_not_the_first_word(hostile):
    with pytest.raises(BlockError, match="label|directive|not an instruction mnemonic|unexpected character"):
        normalize_block(hostile)


def test_a_block_that_escaped_the_gate_cannot_change_its_neighbours_answers():
    """Defence in depth: canonical blocks handed to llvm-mca directly, past the gate, a hostile one
    between the victims: every victim still gets the answer it gets alone."""
    program = LlvmMca(workers=1)
    for hostile in ("a:.if 0", "a:.code16", "a:.intel_syntax noprefix"):
        results = program._run_chunk([VICTIMS[0], hostile, *VICTIMS[1:]])
        assert [r.cycles for i, r in enumerate(results) if i != 1] == alone(VICTIMS), hostile


@pytest.mark.server
@pytest.mark.system
def test_hostile_blocks_change_no_answer_in_one_request_or_across_requests(service):
    expected = alone(VICTIMS)
    mixed = [VICTIMS[0], *HOSTILE, *VICTIMS[1:]]
    code, answers = post(service, {"blocks": mixed, "exact": True})
    assert code == 200
    assert [a["cycles"] for a in answers[:1] + answers[1 + len(HOSTILE):]] == expected
    assert all("error" in a for a in answers[1:1 + len(HOSTILE)]), answers
    # the other client's blocks are gathered into the same llvm-mca runs as the hostile ones
    with ThreadPoolExecutor(8) as pool:
        attacks = [pool.submit(post, service, {"blocks": [*HOSTILE, *HOSTILE], "exact": True}) for _ in range(4)]
        victims = [pool.submit(post, service, {"blocks": VICTIMS, "exact": True}) for _ in range(4)]
        for future in victims:
            code, answers = future.result()
            assert code == 200 and [a.get("cycles") for a in answers] == expected, answers
        assert all(future.result()[0] == 200 for future in attacks)


@pytest.mark.system
def test_a_hostile_block_in_a_file_changes_no_other_answer(home, tmp_path):
    source = tmp_path / "blocks.s"
    source.write_text("addq $11, %rbx\n\na:.if 0\n\nimulq $13, %rcx, %rdx\n\naddq $17, %rsi\n")
    out = subprocess.run([*CLI, "predict", "--program", "llvm-mca", "--input", str(source), "--mcpu", "haswell"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "SURROGATE_OPS_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    rows = out.stdout.strip().splitlines()[1:]
    assert [float(rows[i].split(",")[1]) for i in (0, 2, 3)] == alone(VICTIMS[:3]), rows
    assert "label 'a:'" in rows[1], rows


def slow(k: int) -> str:
    """About a second of llvm-mca (512 divides), distinct for each k so that no answer is cached."""
    return "\n".join([f"addq ${k}, %r8", *["divq %rcx"] * 511])


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.system
def test_one_clients_slow_blocks_do_not_hold_another_client(home):
    """16 blocks of about a second each (once one chunk of 16, past the timeout twice, all failed) are
    all answered, and a one-block request sent beside them waits less than the llvm-mca timeout."""
    timeout = 5
    with running(home, "--model", MODEL, SURROGATE_OPS_MCA_TIMEOUT=str(timeout)) as url:
        with ThreadPoolExecutor(1) as pool:
            heavy = pool.submit(post, url, {"blocks": [slow(k) for k in range(16)], "exact": True})
            time.sleep(1)
            started = time.monotonic()
            code, answers = post(url, {"blocks": [VICTIMS[1]], "exact": True})
            waited = time.monotonic() - started
            heavy_code, heavy_answers = heavy.result()
    assert code == 200 and answers[0]["cycles"] == alone(VICTIMS[1:2])[0]
    assert waited < timeout + 1, waited
    assert heavy_code == 200 and all("cycles" in a for a in heavy_answers), heavy_answers


def _send_headers(url: str, headers: dict[str, str]) -> http.client.HTTPConnection:
    address = urlparse(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    connection.putrequest("POST", "/predict")
    for name, value in headers.items():
        connection.putheader(name, value)
    connection.endheaders()
    return connection


@pytest.mark.server
@pytest.mark.system
def test_a_body_over_the_limit_is_refused_before_it_is_read(service):
    warm = status(service)["memory_mb"]
    started = time.monotonic()
    connection = _send_headers(service, {"Content-Type": "application/json", "Content-Length": str(600 << 20)})
    try:
        connection.send(b'{"blocks": ["' + b"a" * (4 << 20))  # a start; the rest never needs to come
    except OSError:
        pass  # the server answered and closed first
    response = connection.getresponse()
    assert response.status == 413 and "over the limit" in json.loads(response.read())["error"]
    assert time.monotonic() - started < 5
    # without a length: chunks until past the limit
    connection = _send_headers(service, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    piece = b"a" * (1 << 20)
    try:
        for _ in range(40):
            connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    except OSError:
        pass
    assert connection.getresponse().status == 413
    assert status(service)["memory_mb"] < 1.2 * warm
    assert post(service, {"blocks": GOOD[:2]})[0] == 200


@pytest.mark.parametrize("body", [{"blocks": GOOD[:1], "exact": "yes"}, {"blocks": GOOD[:1], "max_error": True},
                                  {"blocks": GOOD[:1], "max_error": "0.05"}, {"blocks": GOOD[:1], "mpcu": "skylake"},
                                  {"blocks": GOOD[0]}, {"blocks": GOOD[:1], "exact": 1}])
@pytest.mark.server
@pytest.mark.system
def test_fields_are_typed_strictly(service, body):
    code, text = post(service, body)
    assert code == 400, (body, code, text)


@pytest.mark.server
@pytest.mark.system
def test_an_llvm_mca_that_crashes_on_every_simulation_is_remembered(home, tmp_path):
    """It answers --version, so it once looked fine to /ops/healthz while every request bisected its
    chunks into hundreds of crashing calls."""
    real, calls = LlvmMca().path, tmp_path / "calls"
    mca = script(tmp_path, "llvm-mca", f'#!/bin/sh\ncase "$*" in *-iterations=*) echo run >> {calls}; kill -SEGV $$;; esac\n'
                                       f'exec {real} "$@"\n')
    env = {"SURROGATE_OPS_LLVM_MCA": mca, "SURROGATE_OPS_MCA_RETRY": "60"}
    with running(home, "--model", MODEL, **env) as url:
        started = time.monotonic()
        code, answers = post(url, {"blocks": [f"addq ${k}, %rax" for k in range(512)], "exact": True})
        assert code == 200 and time.monotonic() - started < 5
        assert all(a["error"].startswith("llvm-mca unavailable: llvm-mca crashes") for a in answers)
        assert calls.read_text().count("run") <= 2 * os.cpu_count() * 2  # a chunk and a check on each core at most
        assert status(url)["llvm_mca"].startswith("unavailable: llvm-mca crashes on a one-instruction block")
        before = calls.read_text().count("run")
        code, answers = post(url, {"blocks": [f"addq ${k}, %rbx" for k in range(64)], "exact": True})
        assert code == 200 and calls.read_text().count("run") == before  # failed at once


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.system
def test_a_worker_killed_outright_leaves_no_llvm_mca_behind_and_is_logged(home, tmp_path):
    """llvm-mca (here a wrapper whose child would outlive it) is running for a request when the
    worker is killed with SIGKILL: the worker that replaces it says so in the log and ends what it
    left; the service answers again."""
    marker = f"sleep {900_000 + os.getpid() % 99_999}"  # this run's own: nothing left by another run matches
    mca = script(tmp_path, "llvm-mca", f'#!/bin/sh\ncase "$*" in *-iterations=*) {marker} & wait;; esac\n'
                                       f'exec {LlvmMca().path} "$@"\n')
    with running(home, "--model", MODEL, SURROGATE_OPS_LLVM_MCA=mca, SURROGATE_OPS_MCA_TIMEOUT="600") as url:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(post, url, {"blocks": GOOD[:1], "exact": True})  # its connection dies with the worker
            deadline = time.monotonic() + 30
            while not (_pids(marker) and _pids(mca)) and time.monotonic() < deadline:
                time.sleep(0.2)
            worker = _worker_of(mca)
            os.kill(worker, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while "died without shutting down" not in url.log.read_text() and time.monotonic() < deadline:
                time.sleep(0.5)
            log = url.log.read_text()
            assert f"the previous worker (pid {worker}" in log and "ended 1 llvm-mca process group" in log, log[-3000:]
            assert not _pids(marker)
            assert status(url)["ready"] and post(url, {"blocks": GOOD[:1]})[0] == 200
    assert not _pids(marker)


def _pids(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def _worker_of(tool: str) -> int:
    """The service worker that started `tool` (its parent)."""
    pids = _pids(tool)
    assert len(pids) == 1, f"llvm-mca should be running once for the request: {pids}"
    pid = pids[0]
    return int(Path(f"/proc/{pid}/status").read_text().split("PPid:")[1].split()[0])
