"""The BentoML service over real HTTP: `surrogate-ops serve` (bentoml serve) on a free localhost port,
the real llvm-mca behind the fallback, a model registered by the test in a real MLflow store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from support.cli import CLI, COMMAND_TIMEOUT
from support.data import GOOD, LONG, UNKNOWN
from support.servers import free_port, post, running, status
from support.stores import in_home, store_with

from surrogate_ops import registry
from surrogate_ops.programs import LlvmMca
from surrogate_ops.programs.setting import McaSetting
from surrogate_ops.runtime.inference import Predictor
from surrogate_ops.serving.policy import DEFAULT_POLICY, Block, Limits, Rejected, other_mcpu, too_long, unknown_tokens
from surrogate_ops.serving.pool import FairPool, Gathered
from surrogate_ops.serving.server import Server

LIMITS = {"SURROGATE_OPS_MAX_BLOCKS": "300", "SURROGATE_OPS_MAX_INSTRUCTIONS": "200", "SURROGATE_OPS_MAX_BYTES": "60000"}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A fresh store with models registered by the test: the bundled Haswell surrogate as `svc-test`,
    the bundled Skylake one as `svc-skylake`."""
    return store_with(tmp_path_factory, svc_test="llvm-mca-haswell", svc_skylake="llvm-mca-skylake")


@pytest.fixture(scope="module")
def service(home):
    with running(home, "--model", "models:/svc-test@champion", "--model", "models:/svc-skylake@champion",
                 **LIMITS) as url:
        yield url


@pytest.fixture(scope="module")
def model_dir(home) -> Path:

    with in_home(home):
        return registry.open("models:/svc-test@champion").model


@pytest.fixture(scope="module")
def skylake_dir(home) -> Path:

    with in_home(home):
        return registry.open("models:/svc-skylake@champion").model


@pytest.mark.server
@pytest.mark.system
def test_answers_match_the_model_and_llvm_mca(service, model_dir, skylake_dir):
    from surrogate_ops.runtime.inference import Predictor

    status = json.loads(urllib.request.urlopen(f"{service}/ops/healthz").read())
    assert status["mode"] == "surrogate+llvm-mca" and status["model_version"] == "svc-test/1"
    assert {m: s["model_version"] for m, s in status["surrogates"].items()} == {"haswell": "svc-test/1",
                                                                               "skylake": "svc-skylake/1"}
    assert status["load_error"] is None and "LLVM" in status["llvm_mca"]
    assert urllib.request.urlopen(f"{service}/docs.json").status == 200

    blocks = [*GOOD, UNKNOWN, LONG]
    code, answers = post(service, {"blocks": blocks, "mcpu": "haswell"})
    assert code == 200 and len(answers) == len(blocks)
    expected = Predictor(model_dir).cycles(GOOD)
    assert [a["source"] for a in answers[:len(GOOD)]] == ["surrogate"] * len(GOOD)
    assert np.allclose([a["cycles"] for a in answers[:len(GOOD)]], expected, rtol=1e-5)
    mca = LlvmMca(mcpu="haswell").run([UNKNOWN, LONG])
    assert answers[-2] == {"cycles": mca[0].cycles, "source": "llvm-mca",
                           "reason": "tokens outside the model's vocabulary: invlpg"}
    assert answers[-1]["cycles"] == mca[1].cycles and "80 instructions, over the model's limit of 64" in answers[-1]["reason"]

    code, exact = post(service, {"blocks": GOOD[:3], "exact": True})
    assert code == 200 and [a["cycles"] for a in exact] == [r.cycles for r in LlvmMca(mcpu="haswell").run(GOOD[:3])]
    assert {a["reason"] for a in exact} == {"exact answer requested"}
    # routed by mcpu: skylake's surrogate answers skylake; a CPU with no surrogate gets llvm-mca
    code, skylake = post(service, {"blocks": GOOD, "mcpu": "skylake"})
    assert code == 200 and {a["source"] for a in skylake} == {"surrogate"}
    assert np.allclose([a["cycles"] for a in skylake], Predictor(skylake_dir).cycles(GOOD), rtol=1e-5)
    assert not np.allclose([a["cycles"] for a in skylake], expected, rtol=1e-3)
    code, zen = post(service, {"blocks": GOOD[:2], "mcpu": "znver1"})
    assert [a["cycles"] for a in zen] == [r.cycles for r in LlvmMca(mcpu="znver1").run(GOOD[:2])]
    assert zen[0]["reason"] == "no surrogate for znver1 (this service has haswell, skylake)"


@pytest.mark.server
@pytest.mark.system
def test_max_error_routes_exactly_the_blocks_estimated_above_it(service):
    """Every surrogate answer carries the error head's estimate; with max_error, exactly the blocks
    estimated above it are llvm-mca's answers, which keep the estimate and say why."""
    from surrogate_ops.blocks.generate import generate

    blocks = GOOD + generate(30, seed=41, density="loops")
    code, plain = post(service, {"blocks": blocks, "mcpu": "haswell"})
    assert code == 200 and {a["source"] for a in plain} == {"surrogate"}
    estimates = np.array([a["estimated_error"] for a in plain])
    assert np.all(estimates > 0)
    threshold = float(np.median(estimates))
    code, routed = post(service, {"blocks": blocks, "mcpu": "haswell", "max_error": threshold})
    assert code == 200
    assert [a["source"] for a in routed] == ["llvm-mca" if e > threshold else "surrogate" for e in estimates]
    above = [b for b, e in zip(blocks, estimates, strict=True) if e > threshold]
    assert [a["cycles"] for a in routed if a["source"] == "llvm-mca"] == [r.cycles for r in LlvmMca("haswell").run(above)]
    assert [a["estimated_error"] for a in routed] == list(estimates)
    assert all(a["reason"].endswith(f"over max_error {threshold:.1%}") for a in routed if a["source"] == "llvm-mca")
    assert [a for a in routed if a["source"] == "surrogate"] == [a for a, e in zip(plain, estimates) if e <= threshold]
    code, text = post(service, {"blocks": blocks[:2], "max_error": -0.1})
    assert code == 400 and "max_error must be a relative error of 0 or more" in text
    assert post(service, {"blocks": blocks[:2], "max_error": "small"})[0] == 400
    assert "estimates_error" in status(service)["surrogates"]["haswell"]


@pytest.mark.server
@pytest.mark.system
def test_bad_input_gets_clear_answers(service):
    assert post(service, {"blocks": GOOD[:1] * 301})[0] == 413
    assert post(service, {"blocks": ["addq %rax, %rbx\n" * 150] * 30})[0] == 413  # 72 kB of text
    code, text = post(service, {"blocks": ["nop\n" * 201]})
    assert code == 422 and "201 instructions, over the limit of 200" in text
    code, text = post(service, {"blocks": GOOD[:1], "mcpu": "pentium9"})
    assert code == 400 and "does not know -mcpu=pentium9" in text
    assert post(service, {"blocks": "addq %rax, %rbx"})[0] == 400
    assert post(service, b"{not json")[0] == 400

    a, b = GOOD[0], GOOD[1]
    bad = [".text\naddq %rax, %rbx", "addq %rax, %rbx # comment", "addq %rax, %rbx\x00",
           "addq %rax, %rax\n# LLVM-MCA-END", "# LLVM-MCA-BEGIN x\naddq %rax, %rax", "hello, world!!", "}{"]
    for exact in (False, True):
        code, answers = post(service, {"blocks": [a, *bad, b], "exact": exact})
        assert code == 200 and all("error" in x for x in answers[1:-1]), answers
        alone = [post(service, {"blocks": [x], "exact": exact})[1][0] for x in (a, b)]
        assert [answers[0], answers[-1]] == alone  # no bad block shifts another block's answer
    assert "directive" in answers[1]["error"] and "comment" in answers[4]["error"]


@pytest.mark.server
@pytest.mark.system
def test_concurrent_clients_get_their_single_request_answers(service):
    requests = [{"blocks": GOOD[i % 5: i % 5 + 6] + ([UNKNOWN] if i % 3 == 0 else []), "exact": i % 4 == 0,
                 "mcpu": "skylake" if i % 7 == 0 else "haswell"} for i in range(32)]
    single = [post(service, r) for r in requests]
    with ThreadPoolExecutor(max_workers=32) as pool:
        together = list(pool.map(lambda r: post(service, r), requests * 2))
    assert all(code == 200 for code, _ in single + together)
    assert together == single * 2


def test_waiting_chunks_of_one_setting_run_gathered():
    """Concurrent requests' fallback chunks under one llvm-mca setting share a call while they fit
    in `most` blocks; each request gets its own slice back, in order; other settings run apart."""
    pool, release, calls = FairPool(1), threading.Event(), []

    def run(items):
        calls.append(list(items))
        return [10 * x for x in items]

    busy = pool.map(lambda _: release.wait(30), [None])  # the one worker is held while the jobs queue
    first = pool.map(run, [[1, 2]], batch="haswell", most=6)
    second = pool.map(run, [[3, 4, 5], [6, 7, 8, 9, 10, 11, 12]], batch="haswell", most=6)
    other = pool.map(run, [[13]], batch="skylake", most=6)
    release.set()
    assert busy[0].result(30) is True
    assert [f.result(30) for f in first + second + other] == [[10, 20], [30, 40, 50], [60, 70, 80, 90, 100, 110, 120],
                                                               [130]]
    assert calls == [[1, 2, 3, 4, 5], [13], [6, 7, 8, 9, 10, 11, 12]]
    assert (pool.calls, pool.gathered) == (4, 1)


def test_concurrent_network_calls_run_gathered():
    """Requests arriving while the network runs are answered by one call, up to `most` blocks, each
    with its own slice; a request alone runs at once."""
    release, calls = threading.Event(), []

    def network(items):
        calls.append(list(items))
        if items == ["hold"]:
            release.wait(30)
        return [f"{x}!" for x in items]

    network_of = Gathered(network, most=5)
    assert network_of(["alone"]) == ["alone!"]
    with ThreadPoolExecutor(4) as pool:
        held = pool.submit(network_of, ["hold"])
        while len(calls) < 2:
            time.sleep(0.01)
        waiting = []
        for items in (["a", "b"], ["c", "d", "e"], ["f"]):  # queued one after another, in this order
            waiting.append(pool.submit(network_of, items))
            while len(network_of) < len(waiting):
                time.sleep(0.01)
        release.set()
        assert held.result(30) == ["hold!"]
        assert [w.result(30) for w in waiting] == [["a!", "b!"], ["c!", "d!", "e!"], ["f!"]]
    assert calls == [["alone"], ["hold"], ["a", "b", "c", "d", "e"], ["f"]]
    assert (network_of.calls, network_of.gathered) == (4, 1)


@pytest.mark.server
@pytest.mark.system
def test_a_relative_model_directory_is_served(home, tmp_path, monkeypatch):
    """The server runs in a folder of its own: a directory named relative to where `serve` was
    typed must still be the model it loads."""
    import shutil

    from surrogate_ops.config import PRETRAINED

    shutil.copytree(PRETRAINED / "llvm-mca-haswell", tmp_path / "mine")
    monkeypatch.chdir(tmp_path)
    with running(home, "--model", "mine", **LIMITS) as url:
        assert status(url)["mode"] == "surrogate+llvm-mca"
        code, answers = post(url, {"blocks": GOOD[:2]})
        assert code == 200 and {a["source"] for a in answers} == {"surrogate"}


@pytest.mark.server
@pytest.mark.system
def test_without_a_model_the_service_stays_up_on_llvm_mca(home):
    with running(home, "--model", str(home / "no-such-model"), **LIMITS) as url:
        status = json.loads(urllib.request.urlopen(f"{url}/ops/healthz").read())
        assert status["mode"] == "llvm-mca-only" and "not a surrogate model directory" in status["load_error"]
        code, answers = post(url, {"blocks": GOOD[:3]})
        assert code == 200 and [a["cycles"] for a in answers] == [r.cycles for r in LlvmMca().run(GOOD[:3])]
        assert answers[0]["reason"].startswith("no surrogate loaded")


@pytest.mark.server
@pytest.mark.system
def test_the_fallback_runs_llvm_mca_with_tuned_parameters(home, tmp_path):
    """serve --params (an `optimize --out` file): llvm-mca answers with those knobs on the model's
    mcpu (haswell when there is no model), with its defaults on others."""
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"dispatch": 1, "noalias": False}))
    with running(home, "--model", str(home / "no-such-model"), "--params", str(params), **LIMITS) as url:
        status = json.loads(urllib.request.urlopen(f"{url}/ops/healthz").read())
        assert status["llvm_mca_params"] == {"mcpu": "haswell", "dispatch_width": 1, "noalias": False}
        code, answers = post(url, {"blocks": GOOD[:3]})
        tuned = LlvmMca(setting=McaSetting({"dispatch": 1, "noalias": False})).run(GOOD[:3])
        assert code == 200 and [a["cycles"] for a in answers] == [r.cycles for r in tuned]
        assert tuned != LlvmMca().run(GOOD[:3])
        code, answers = post(url, {"blocks": GOOD[:3], "mcpu": "skylake"})
        assert [a["cycles"] for a in answers] == [r.cycles for r in LlvmMca("skylake").run(GOOD[:3])]
    params.write_text(json.dumps({"dispatch": 0}))
    out = subprocess.run([*CLI, "serve", "--model", str(home / "no-such-model"), "--params", str(params), "--port",
                          str(free_port())], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SURROGATE_OPS_HOME": str(home)})
    assert out.returncode != 0 and "dispatch_width: 0 is outside [1, 12]" in out.stderr


@pytest.mark.server
@pytest.mark.system
def test_the_fallback_runs_the_learned_table_that_ships(home):
    """serve --params learned:haswell: llvm-mca answers through the parametric driver under the
    packaged learned table; healthz names the table by its size."""
    learned = McaSetting.load("learned:haswell")
    with running(home, "--model", str(home / "no-such-model"), "--params", "learned:haswell", **LIMITS) as url:
        status = json.loads(urllib.request.urlopen(f"{url}/ops/healthz").read())
        assert status["llvm_mca_params"] == {"mcpu": "haswell",
                                             "per_instruction": f"{len(learned.table)} opcodes"}
        blocks = [*GOOD, "idivq %rcx\naddq %rax, %rbx", "addq $1, (%rdi)\naddq $1, (%rdi)"]
        code, answers = post(url, {"blocks": blocks})
        tuned = LlvmMca(setting=learned).run(blocks)
        assert code == 200 and [a["cycles"] for a in answers] == [r.cycles for r in tuned]
        assert [r.cycles for r in tuned] != [r.cycles for r in LlvmMca().run(blocks)]


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.system
def test_crashing_or_missing_llvm_mca_leaves_the_surrogate_answering(home, tmp_path):
    crash = tmp_path / "llvm-mca"
    crash.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crash.chmod(0o755)
    for path in (str(crash), str(tmp_path / "missing" / "llvm-mca")):
        with running(home, "--model", "models:/svc-test@champion", SURROGATE_OPS_LLVM_MCA=path, **LIMITS) as url:
            code, answers = post(url, {"blocks": [GOOD[0], UNKNOWN, GOOD[1]]})
            assert code == 200 and answers[0]["source"] == answers[2]["source"] == "surrogate"
            assert answers[1]["error"].startswith(("llvm-mca unavailable", "llvm-mca failed")), answers[1]


def test_policy_rules_are_small_units(model_dir):
    server = Server(model_dir)
    block = Block(index=0, raw="addq %rax, %rbx", mcpu="haswell", instructions=1)
    assert [rule(block, server) for rule in DEFAULT_POLICY] == [None, None, None]
    assert other_mcpu(Block(0, "nop", "skylake", 1), server) == "no surrogate for skylake (this service has haswell)"
    assert too_long(Block(0, "nop", "haswell", 65), server) == "65 instructions, over the model's limit of 64"
    assert unknown_tokens(Block(0, "fyl2x", "haswell", 1, unknown=("fyl2x",)), server).endswith("fyl2x")

    def never_trust_div(block, server):  # a later policy slots in as one more rule
        return "division is hard" if "div" in block.text else None

    custom = Server(model_dir, policy=(*DEFAULT_POLICY, never_trust_div))
    answers = custom.predict(["xorl %eax, %eax\ndivq %rcx", "addq %rax, %rbx"])
    assert answers[0]["reason"] == "division is hard" and answers[1]["source"] == "surrogate"


def test_target_measured_routes_to_the_surrogate_of_measured_throughput(model_dir, skylake_dir, tmp_path):
    """A model recorded as fine-tuned on a CPU's measurements (target measured) answers that CPU's
    `target="measured"` requests; llvm-mca's surrogate keeps the plain ones, and a CPU with no measured
    surrogate goes to llvm-mca, saying so. (The measured one here is the Skylake network, recorded as
    Haswell's measured surrogate, so that its answers differ from the Haswell surrogate's.)"""
    import json
    import shutil

    measured = tmp_path / "llvm-mca-haswell-measured"
    shutil.copytree(skylake_dir.path, measured)
    meta = json.loads((measured / "surrogate.json").read_text())
    (measured / "surrogate.json").write_text(json.dumps({**meta, "mcpu": "haswell", "target": "measured"}))
    server = Server([model_dir, measured], versions=["svc-test/1", "here/1"])
    blocks = ["addq %rax, %rbx\nimulq %rbx, %rcx", "movq (%rdi), %rax\naddq $1, %rax"]
    plain, from_measured = server.predict(blocks, "haswell"), server.predict(blocks, "haswell", target="measured")
    assert [a["source"] for a in plain + from_measured] == ["surrogate"] * 4
    assert [a["cycles"] for a in plain] == pytest.approx(list(Predictor(model_dir).cycles(blocks)), rel=1e-5)
    assert [a["cycles"] for a in from_measured] == pytest.approx(list(Predictor(skylake_dir).cycles(blocks)), rel=1e-5)
    assert set(server.status()["surrogates"]) == {"haswell", "haswell/measured"}
    other = server.predict(blocks[:1], "skylake", target="measured")[0]
    assert other["source"] == "llvm-mca" and other["reason"].startswith("no surrogate for skylake/measured")
    with pytest.raises(Rejected, match="target must be mca or measured"):
        server.predict(blocks, "haswell", target="cycles")


def test_a_large_call_encoded_by_worker_processes_answers_as_one_process_does(model_dir, monkeypatch):
    """`predict`'s chunks are large: the compiled front end reads them on threads, or without it the
    predictor's worker processes encode them side by side, and every answer (surrogate, fallback
    and its reason, unreadable) is the one-process Python path's."""
    from surrogate_ops.blocks.generate import generate
    from surrogate_ops.runtime import inference

    odd = [UNKNOWN, LONG, "addq %rax", "movq (%rdi), %rax\n.byte 1", "", GOOD[0]]
    blocks = generate(inference.PARALLEL_MIN, seed=31) + odd * 20
    limits = Limits(max_instructions=1 << 30)
    compiled = Server(inference.Predictor(model_dir), limits=limits)
    monkeypatch.setenv("SURROGATE_OPS_FRONTEND", "python")
    side_by_side = Server(inference.Predictor(model_dir, workers=2), limits=limits)
    alone = Server(inference.Predictor(model_dir, workers=1), limits=limits)
    assert side_by_side.predictor.parallel(len(blocks)) and not alone.predictor.parallel(len(blocks))
    assert compiled.predictor.native is not None and alone.predictor.native is None
    try:
        together = side_by_side.answer(blocks, "haswell", first=7)
        assert together == alone.answer(blocks, "haswell", first=7) == compiled.answer(blocks, "haswell", first=7)
    finally:
        side_by_side.predictor.close()
    sources = {a.get("source", "error") for a in together}
    assert sources == {"surrogate", "llvm-mca", "error"}


@pytest.mark.system
def test_bento_builds_offline_with_its_dockerfile(home, tmp_path):
    env = {**os.environ, "SURROGATE_OPS_HOME": str(home), "BENTOML_HOME": str(tmp_path / "bentoml")}
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"dispatch": 3}))
    out = subprocess.run([*CLI, "bento", "--model", "models:/svc-test@champion", "--params", str(params)],
                         capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "carrying svc-test v1" in out.stdout and "surrogate-ops containerize --bento surrogate-ops:" in out.stdout
    (bento,) = (tmp_path / "bentoml" / "bentos" / "surrogate-ops").glob("*/bento.yaml")
    root = bento.parent
    carried = root / "src" / "models" / "haswell"
    assert (carried / "model.onnx").is_file() and (carried / "VERSION").read_text() == "svc-test/1\n"
    dockerfile = (root / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM localhost/surrogate-ops-base:bookworm " in dockerfile and "build-essential" not in dockerfile
    # the package's source, without its bundled models; the serving packages pinned to this host's
    assert (root / "src" / "surrogate_ops" / "serving" / "server.py").is_file() and not (root / "src" / "surrogate_ops" / "pretrained").exists()
    import onnxruntime

    requirements = (root / "env" / "python" / "requirements.txt").read_text()
    assert f"onnxruntime=={onnxruntime.__version__}" in requirements and "torch" not in requirements
    assert "service:Surrogate" in bento.read_text()
    assert json.loads((root / "src" / "params.json").read_text()) == {"dispatch_width": 3}  # the fallback's knobs, checked


@pytest.mark.server
@pytest.mark.system
def test_llvm_mca_answers_are_cached_and_counted(service):
    """llvm-mca is deterministic: a block asked again is answered from the cache, with llvm-mca's own
    cycles; /ops/healthz gives the hit rate and the blocks by source and rule, /metrics the same for
    Prometheus."""
    block = "\n".join(f"addq ${k}, %rax\nimulq %rbx, %rcx" for k in range(40))  # 80 instructions: llvm-mca's
    before = status(service)["llvm_mca_cache"]
    first, again = (post(service, {"blocks": [block, GOOD[0]]})[1] for _ in range(2))
    after = status(service)["llvm_mca_cache"]
    assert first == again and first[0]["cycles"] == LlvmMca().run([block])[0].cycles
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (1, 1)
    answered = {(a["mcpu"], a["source"], a["rule"]): a["blocks"] for a in status(service)["answered"]}
    assert answered[("haswell", "llvm-mca", "too_long")] >= 2 and answered[("haswell", "surrogate", "")] >= 2
    metrics = urllib.request.urlopen(f"{service}/metrics").read().decode()
    assert re.search(r'surrogate_ops_blocks_total\{mcpu="haswell",rule="too_long",source="llvm-mca"\} [1-9]', metrics)
    assert re.search(r'surrogate_ops_llvm_mca_cache_total\{result="hit"\} [1-9]', metrics)
