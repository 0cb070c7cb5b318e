"""The throughput service's core, kept apart from BentoML (see `bento/service.py`): the two answerers,
the surrogate and the real llvm-mca, under the limits and fallback rules of `policy` and the shared
queues of `pool`.

Requests run side by side (the BentoML service gives them threads). Their llvm-mca work shares one
`FairPool`, a thread per core: chunks are served round robin across requests, so a small request
waits for at most the chunks already running, never behind a big request's backlog; small chunks of
concurrent requests under the same llvm-mca setting run gathered in one process; and the
simulations run at a lower CPU priority than the surrogate's own work. Every llvm-mca call, the
start-up probes included, runs under `Limits.mca_timeout`; a failure of llvm-mca is remembered for
`Limits.mca_retry` seconds and then tried again (see `programs.llvm_mca`).

A request is a list of assembly blocks, an `mcpu` and `exact`. Every block gets one answer, in order:
`{"cycles", "source": "surrogate"}`, `{"cycles", "source": "llvm-mca", "reason"}` when the policy sent
it to llvm-mca, or `{"error"}` when it cannot be answered (unreadable text, llvm-mca's own error,
llvm-mca missing). Whole-request problems (too many blocks, too many bytes, a block over the
instruction limit, an mcpu llvm-mca does not know) raise `Rejected` with a 4xx status.

A server holds one surrogate per mcpu it serves (`predictors`, keyed by the model's own mcpu, or
<mcpu>/measured for one fine-tuned on measured throughput) and routes each request to the surrogate
of its mcpu and target; an mcpu with none goes to llvm-mca.

The fallback policy is a tuple of small rules (`policy`), each `rule(block, server) -> reason | None`;
the first reason sends the block to llvm-mca.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surrogate_ops.blocks.asm import BlockError
from surrogate_ops.config import AUTO_ENGINE, Source
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.programs.setting import McaSetting
from surrogate_ops.serving.policy import DEFAULT_POLICY, Block, Limits, Rejected, Rule, route
from surrogate_ops.serving.pool import AnswerCache, FairPool, Gathered


@dataclass(slots=True)
class _Call:
    """One `Server.answer` call: its answers in order, and its tally by (mcpu, source, rule)."""

    first: int
    mcpu: str
    route: str  # the surrogate asked (`policy.route`)
    fallback: bool
    max_error: float | None
    answers: list[dict | None]
    tally: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def put(self, block: Block, answer: dict, source: str, rule: str) -> None:
        self.answers[block.index - self.first] = answer
        self.tally[self.mcpu, source, rule] += 1

    def refuse(self, block: Block, reason: str, rule: str) -> None:
        self.put(block, {"error": f"block {block.index}: not answered without llvm-mca: {reason}"}, Source.ERROR, rule)


class Server:
    """Answers throughput queries with the surrogate where the policy trusts it, else llvm-mca."""

    def __init__(self, model=None, load_error: str | None = None, llvm_mca: str | None = None,
                 limits: Limits | None = None, policy: Sequence[Rule] = DEFAULT_POLICY, model_uri: str | None = None,
                 mca_setting: McaSetting | None = None, versions: Sequence[str] = ()):
        """`model`: a model directory or a loaded Predictor, or a list of them (one per mcpu; the first is the primary);
        `versions`, beside them, the registered version each one is (what the status reports).
        `mca_setting` (knobs, e.g. from `optimize --out`, or a per-instruction table) is the fallback's
        llvm-mca setting for the primary model's mcpu; other mcpus keep llvm-mca's defaults."""
        from surrogate_ops.runtime.inference import Predictor

        self.limits = limits or Limits()
        self.policy = tuple(policy)
        self.llvm_mca_path = llvm_mca
        self.model_uri = model_uri
        self.versions: dict[str, str] = {}  # route (`policy.route`) -> registered version (or directory) it answers with
        self.predictors: dict[str, Predictor] = {}
        errors = [load_error] if load_error else []
        models = [] if model is None or load_error else list(model) if isinstance(model, list | tuple) else [model]
        for k, one in enumerate(models):
            try:
                predictor = one if isinstance(one, Predictor) else Predictor(
                    one, engine=AUTO_ENGINE, line_cache=max(self.limits.line_cache // len(models), 256))
            except Exception as exc:  # noqa: BLE001 - any failure leaves the service up on llvm-mca alone
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            key = route(predictor.meta.get("mcpu", "haswell"), predictor.meta.get("target", "mca"))
            if key not in self.predictors:  # the first model of an mcpu (and target) answers for it
                self.predictors[key] = predictor
                if k < len(versions):
                    self.versions[key] = versions[k]
        self.load_error = "; ".join(errors) or None
        self._networks = {mcpu: Gathered(_network_of(p), self.limits.network_gather) for mcpu, p in self.predictors.items()}
        self.setting_mcpu = self.predictor.meta.get("mcpu", "haswell") if self.predictor else "haswell"
        self.mca_setting = McaSetting()
        if mca_setting:  # checked now: a wrong file stops the service at start, not every fallback later
            from surrogate_ops.programs import LlvmMca

            self.mca_setting = LlvmMca(self.setting_mcpu, setting=mca_setting, path=llvm_mca, **self._mca_limits).setting
        # one pool for every request's llvm-mca calls: at most one process per core, whatever the load
        self.cores = len(os.sched_getaffinity(0))
        self.mca_pool = FairPool(self.cores)
        self.mca_cache = AnswerCache(self.limits.mca_cache_bytes)
        self.tally: Counter[tuple[str, str, str]] = Counter()  # (mcpu, source, rule) -> blocks answered
        # called after each answer() with (that call's tally, seconds spent waiting for llvm-mca): the
        # service's Prometheus metrics
        self.observe: Callable[[Counter, float], None] | None = None

    @property
    def _mca_limits(self) -> dict:
        return {"timeout": self.limits.mca_timeout, "retry": self.limits.mca_retry}

    @property
    def predictor(self):
        """The primary surrogate (the first loaded), or None."""
        return next(iter(self.predictors.values()), None)

    @property
    def model_version(self) -> str | None:
        """The registered version of the primary surrogate."""
        return self.versions.get(next(iter(self.predictors), ""))

    @classmethod
    def from_uri(cls, model_uri: str | Sequence[str] | None, carried: Path | None = None, **kwargs) -> Server:
        """Load the models to serve, one per mcpu (`registry.served`: those named, as registry URIs or model
        directories, a URI, a comma-separated list or a list; else those a bento carries in `carried`;
        else every bundled CPU's champion), each through `registry.open`; a failure is kept in
        `load_error`, not raised."""
        from surrogate_ops import registry  # MLflow only for registry URIs: an image carries directories

        uris = registry.served(model_uri, carried)
        loaded, versions, errors = [], [], []
        for uri in uris:
            try:
                opened = registry.open(uri)
                loaded.append(opened.model)
                versions.append(opened.stamp)  # a bento's model says its registered version
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{type(exc).__name__}: {exc}")
        server = cls(loaded or None, model_uri=",".join(uris), versions=versions, **kwargs)
        server.load_error = "; ".join(filter(None, [*errors, server.load_error])) or None
        return server

    @property
    def mode(self) -> str:
        return "surrogate+llvm-mca" if self.predictor else "llvm-mca-only"

    def status(self) -> dict:
        meta = self.predictor.meta if self.predictor else {}
        return {"ready": True, "mode": self.mode, "model": self.model_uri,
                "model_version": self.model_version, "arch": meta.get("arch"),
                "mcpu": meta.get("mcpu"), "engine": self.predictor.engine_name if self.predictor else None,
                "surrogates": {mcpu: {"model_version": self.versions.get(mcpu), "arch": p.meta.get("arch"),
                                      "engine": p.engine_name, "estimates_error": p.confident}
                               for mcpu, p in self.predictors.items()},
                "load_error": self.load_error, "llvm_mca": self._mca_status(),
                "llvm_mca_params": {"mcpu": self.setting_mcpu, **self.mca_setting.summary()} if self.mca_setting else None,
                "limits": self.limits.__dict__, "policy": [rule.__name__ for rule in self.policy],
                "memory_mb": resident_mb(), "llvm_mca_cache": self.mca_cache.stats(),
                "fallback_queue": len(self.mca_pool),
                "llvm_mca_calls": {"calls": self.mca_pool.calls, "gathered_chunks": self.mca_pool.gathered},
                "network_calls": {mcpu: {"calls": g.calls, "gathered_requests": g.gathered}
                                  for mcpu, g in self._networks.items()},
                "answered": [{"mcpu": m, "source": src, "rule": rule, "blocks": n}
                             for (m, src, rule), n in sorted(self.tally.items())]}

    def _mca_status(self) -> str:
        from surrogate_ops.programs.llvm_mca import find_tool, hanging, tool_version

        try:
            path = find_tool("llvm-mca", self.llvm_mca_path)
            why = hanging(path)
            return f"unavailable: {why}" if why else f"{path} (LLVM {tool_version(path, **self._mca_limits)})"
        except Exception as exc:  # noqa: BLE001
            return f"unavailable: {exc}"

    def predict(self, blocks: Sequence[str], mcpu: str = "haswell", exact: bool = False,
                max_error: float | None = None, target: str = "mca") -> list[dict]:
        """A request's answers, one per block, in order; Rejected when the request is refused as a whole.
        `target` "measured" asks the surrogate of `mcpu`'s measured throughput, where one is served."""
        self._check_request(blocks, mcpu, max_error, target)
        return self.answer(blocks, mcpu, exact, max_error=max_error, target=target)

    def answer(self, blocks: Sequence[str], mcpu: str, exact: bool = False, first: int = 0, fallback: bool = True,
               setting: McaSetting | None = None, max_error: float | None = None, target: str = "mca") -> list[dict]:
        """One answer per block under the fallback policy (the service's and `predict`'s): blocks are
        named in errors by their place counted from `first`. `fallback=False` answers an untrusted
        block with an error naming the reason instead of running llvm-mca; `setting`, a setting a
        parameter-conditioned surrogate predicts (and the fallback's llvm-mca runs with).
        A confident surrogate's answers carry `estimated_error`, its estimate of its relative error;
        with `max_error`, a block estimated above it goes to llvm-mca too (rule `max_error`)."""
        call = _Call(first, mcpu, route(mcpu, target), fallback, max_error, [None] * len(blocks))
        predictor = self.predictors.get(call.route)  # the surrogate of this request's mcpu, if the service has one
        surrogate = predictor if predictor is not None and not exact else None
        # encoded as a whole: by the compiled front end, or (a large call: a file's chunk in `predict`)
        # by the predictor's worker processes
        bulk = surrogate.encode_many(blocks, first) if surrogate and surrogate.bulk(len(blocks)) else None
        trusted, untrusted = self._sort(blocks, call, surrogate, bulk, exact)
        started = time.perf_counter()
        pending = self._llvm_mca([b for b, _, _ in untrusted], mcpu, setting)  # runs while the surrogate answers
        # estimated above max_error: llvm-mca's, after the network
        doubtful, estimated = self._surrogate(call, predictor, trusted, setting, bulk) if trusted else ([], {})
        gathered = pending()
        if doubtful:
            gathered += self._llvm_mca([b for b, _, _ in doubtful], mcpu, setting)()
        self._fallen_back(call, untrusted + doubtful, gathered, estimated)
        waited = time.perf_counter() - started if untrusted or doubtful else 0.0
        self.tally.update(+call.tally)
        if self.observe:
            self.observe(+call.tally, waited)
        return call.answers  # type: ignore[return-value]

    def _sort(self, blocks: Sequence[str], call: _Call, surrogate, bulk: tuple | None,
              exact: bool) -> tuple[list[Block], list[tuple[Block, str, str]]]:
        """Each block read (screened or encoded where the surrogate may answer) and sent its way: to the
        surrogate, to llvm-mca with the reason and the rule, or answered now (unreadable; refused where
        there is no fallback). A block over the request's instruction limit refuses the request."""
        trusted: list[Block] = []
        untrusted: list[tuple[Block, str, str]] = []
        for i, raw in enumerate(blocks):
            block = Block(index=call.first + i, raw=raw, mcpu=call.mcpu, route=call.route)
            try:
                if bulk is not None:
                    self._screen(block, surrogate, bulk, i)
                elif surrogate is not None:
                    self._encode(block, surrogate)
                else:
                    block.instructions = block.text.count("\n") + 1
            except BlockError as exc:
                call.answers[i] = {"error": str(exc)}
                call.tally[call.mcpu, "error", "unreadable"] += 1
                continue
            if block.instructions > self.limits.max_instructions:
                raise Rejected(f"block {block.index} has {block.instructions} instructions, over the limit of "
                               f"{self.limits.max_instructions}", 422)
            reason, rule = self._verdict(block, exact)
            if reason is None:
                trusted.append(block)
            elif call.fallback:
                untrusted.append((block, reason, rule))
            else:
                call.refuse(block, reason, rule)
        return trusted, untrusted

    def _verdict(self, block: Block, exact: bool) -> tuple[str | None, str]:
        """Why llvm-mca answers this block, and the rule that says so; (None, "") for the surrogate."""
        if exact:
            return "exact answer requested", "exact"
        if self.predictor is None:
            return f"no surrogate loaded ({self.load_error})", "no_surrogate"
        for check in self.policy:  # the first rule that fires
            found = check(block, self)
            if found:
                return found, check.__name__
        return None, ""

    def _surrogate(self, call: _Call, predictor, trusted: list[Block], setting: McaSetting | None,
                   bulk: tuple | None) -> tuple[list[tuple[Block, str, str]], dict[int, float]]:
        """The surrogate's answers to the trusted blocks; those it estimates above `max_error` come back
        for llvm-mca (or are refused without fallback), with every estimate by block index."""
        doubtful: list[tuple[Block, str, str]] = []
        estimated: dict[int, float] = {}
        cycles, estimates = self._network(predictor, call.route, trusted, setting, bulk)
        for k, (block, value) in enumerate(zip(trusted, cycles, strict=True)):
            answer = {"cycles": float(value), "source": Source.SURROGATE}
            if estimates is not None:
                answer["estimated_error"] = estimated[block.index] = round(float(estimates[k]), 4)
            if call.max_error is None or estimates is None or estimates[k] <= call.max_error:
                call.put(block, answer, Source.SURROGATE, "")
                continue
            reason = f"estimated error {estimates[k]:.1%}, over max_error {call.max_error:.1%}"
            if call.fallback:
                doubtful.append((block, reason, "max_error"))
            else:
                call.refuse(block, reason, "max_error")
        return doubtful, estimated

    @staticmethod
    def _fallen_back(call: _Call, sent: list[tuple[Block, str, str]], gathered: list[dict],
                     estimated: dict[int, float]) -> None:
        """llvm-mca's answers in their blocks' places, each with the reason it answered (and the
        surrogate's estimate where it made one)."""
        for (block, reason, rule), answer in zip(sent, gathered, strict=True):
            if "cycles" in answer:
                answer = {**answer, "reason": reason}
                if block.index in estimated:
                    answer["estimated_error"] = estimated[block.index]
            call.put(block, answer, Source.LLVM_MCA if "cycles" in answer else Source.ERROR, rule)

    def check_max_error(self, mcpu: str, max_error: object, target: str = "mca") -> None:
        """Rejected unless `max_error` is a relative error this service can honour for `mcpu` (the
        request's check, and `predict --max-error`'s)."""
        if max_error is None:
            return
        if isinstance(max_error, bool) or not isinstance(max_error, int | float) or not max_error >= 0:
            raise Rejected(f"max_error must be a relative error of 0 or more (0.05: 5%), not {max_error!r}", 400)
        key = route(mcpu, target)
        predictor = self.predictors.get(key)
        if predictor is not None and not predictor.confident:
            raise Rejected(f"the {key} surrogate ({self.versions.get(key) or predictor.model}) gives no error "
                           "estimates, so max_error cannot be honoured; leave it out, ask for exact answers, or fit "
                           "it an error head (`surrogate-ops confidence`)", 422)

    def _check_request(self, blocks: Sequence[str], mcpu: str, max_error: float | None = None,
                       target: str = "mca") -> None:
        if not isinstance(blocks, list | tuple) or not all(isinstance(b, str) for b in blocks):
            raise Rejected("blocks must be a list of strings", 400)
        if target not in ("mca", "measured"):
            raise Rejected(f"target must be mca or measured, not {target!r}", 400)
        self.check_max_error(mcpu, max_error, target)
        if len(blocks) > self.limits.max_blocks:
            raise Rejected(f"{len(blocks)} blocks in one request, over the limit of {self.limits.max_blocks}", 413)
        size = sum(len(b.encode("utf-8", "surrogatepass")) for b in blocks)
        if size > self.limits.max_bytes:
            raise Rejected(f"{size} bytes of assembly in one request, over the limit of {self.limits.max_bytes}", 413)
        if not isinstance(mcpu, str) or not re.fullmatch(r"[a-z0-9_-]{1,40}", mcpu):
            raise Rejected(f"mcpu must be a CPU name such as haswell, not {mcpu!r}", 400)
        if route(mcpu, target) in self.predictors:  # a surrogate serves it: no need to ask llvm-mca
            return
        from surrogate_ops.programs.llvm_mca import _known_cpus, find_tool

        try:
            known = _known_cpus(find_tool("llvm-mca", self.llvm_mca_path), **self._mca_limits)
        except SurrogateOpsError as exc:
            raise Rejected(f"no surrogate here serves -mcpu={mcpu}, and llvm-mca is unavailable: {exc}", 503) from None
        if mcpu not in known:
            raise Rejected(f"llvm-mca does not know -mcpu={mcpu} (try haswell, skylake, ivybridge)", 400)

    def _network(self, predictor, key: str, trusted: list[Block], setting: McaSetting | None, bulk: tuple | None):
        """The surrogate's cycles and error estimates (None without a head) for the trusted blocks."""
        scaled = predictor.scaled(dict(setting.knobs), len(trusted)) if setting is not None else None
        encoded = bulk[0].select([b.row for b in trusted]) if bulk is not None else [b.ids for b in trusted]
        if setting is None and self.limits.network_gather:  # the common case: shared with concurrent requests
            answered = self._networks[key](encoded)  # (blocks, 2): cycles, estimated error
            return answered[:, 0], answered[:, 1] if predictor.confident else None
        return predictor.answer_encoded(encoded, scaled)

    @staticmethod
    def _screen(block: Block, predictor, bulk: tuple, i: int) -> None:
        """`_encode` for a block of a large call already encoded side by side (`Predictor.encode_many`)."""
        flat, rows, refused, unknown = bulk
        if i in refused:  # read in full: names why it cannot be read, or counts its length
            block.instructions = block.text.count("\n") + 1
            return
        block.row = rows[i]
        block.instructions = int(flat.per_block[block.row])
        if i in unknown:
            block.unknown = tuple(predictor.tokenizer.unknown(block.text))

    @staticmethod
    def _encode(block: Block, predictor) -> None:
        """The surrogate's token ids, each distinct line checked and encoded once (the predictor's
        cache); a block the cache path refuses is read in full, which names why (or its length)."""
        try:
            block.ids, has_unknown = predictor.encode(block.raw, block.index)
        except BlockError:  # unreadable (raised again by .text), or over the model's length limit
            block.ids, has_unknown = [], False
            block.instructions = block.text.count("\n") + 1
            return
        block.instructions = len(block.ids)
        if has_unknown:
            block.unknown = tuple(predictor.tokenizer.unknown(block.text))

    def _llvm_mca(self, blocks: list[Block], mcpu: str, setting: McaSetting | None = None) -> Callable[[], list[dict]]:
        """Start llvm-mca on `blocks` in chunks through the shared pool; the returned function waits
        for the answers. Its absence or crash becomes a per-block error."""
        if not blocks:
            return list
        from surrogate_ops.programs import LlvmMca

        try:
            program = LlvmMca(mcpu=mcpu, path=self.llvm_mca_path, workers=1, nice=5, **self._mca_limits,
                              setting=setting if setting is not None else self.mca_setting if mcpu == self.setting_mcpu
                              else None)
        except Exception as exc:  # noqa: BLE001
            unavailable = [{"error": f"llvm-mca unavailable: {exc}"}] * len(blocks)
            return lambda: unavailable
        alike = (program.path, mcpu, program.setting.key)
        keys = [(b.text, *alike) for b in blocks]
        known = [self.mca_cache.get(key) for key in keys]
        missing = [b.text for b, answer in zip(blocks, known, strict=True) if answer is None]
        chunks = _chunked(missing, self.limits.mca_chunk, self.limits.mca_chunk_instructions)
        # waiting chunks of other requests under this setting may share a call, within both bounds
        most = (self.limits.mca_gather, self.limits.mca_chunk_instructions)
        futures = self.mca_pool.map(program.run, chunks, batch=alike if most[0] else None, most=most,
                                    weigh=_weight)

        def gather() -> list[dict]:
            ran: list[dict] = []
            for chunk, future in zip(chunks, futures, strict=True):
                try:
                    results = future.result()
                except Exception as exc:  # noqa: BLE001 - llvm-mca crashed or vanished mid-request
                    ran.extend([{"error": f"llvm-mca failed: {exc}"}] * len(chunk))
                    continue
                ran.extend({"cycles": float(r.cycles), "source": Source.LLVM_MCA} if r.error is None
                           else {"error": r.error if r.error.startswith("llvm-mca") else f"llvm-mca: {r.error}"}
                           for r in results)
            fresh = iter(ran)
            answers = [answer if answer is not None else next(fresh) for answer in known]
            for key, answer, was in zip(keys, answers, known, strict=True):
                if was is None:
                    self.mca_cache.put(key, answer)
            return answers

        return gather


def _weight(chunk: Sequence[str]) -> tuple[int, int]:
    """A chunk's size as the llvm-mca pool bounds it: blocks, and instructions (what a simulation's
    time grows with)."""
    return len(chunk), sum(block.count("\n") + 1 for block in chunk)


def _chunked(blocks: Sequence[str], most: int, instructions: int) -> list[list[str]]:
    """Consecutive chunks of at most `most` blocks and, unless one block alone is longer, at most
    `instructions` instructions."""
    chunks: list[list[str]] = []
    size = 0
    for block in blocks:
        lines = block.count("\n") + 1
        if not chunks or len(chunks[-1]) >= most or size + lines > instructions:
            chunks.append([])
            size = 0
        chunks[-1].append(block)
        size += lines
    return chunks


def _network_of(predictor) -> Callable[[list], np.ndarray]:
    """A surrogate's network as a function of a list of tokenized blocks: a row of (cycles, estimated
    relative error, NaN from a surrogate without an error head) each."""

    def run(encoded: list) -> np.ndarray:
        cycles, estimates = predictor.answer_encoded(encoded)
        return np.column_stack([cycles, estimates if estimates is not None else np.full(len(cycles), np.nan)])

    return run


def resident_mb() -> float:
    """This process's resident memory now, in MB (what the status reports, for floods and soaks)."""
    try:
        pages = int(open("/proc/self/statm").read().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)


def wait_ready(url: str, timeout: float = 120.0) -> dict:
    """Poll a running service's status until it answers (for the CLI and the tests)."""
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ops/healthz", timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)
