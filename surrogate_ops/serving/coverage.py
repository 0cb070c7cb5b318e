"""How much of a user's own code the surrogates answer themselves, CPU by CPU.

`read_blocks` cuts the blocks of ELF binaries and assembly files (as `collect` does, through
`datasets.gather`). `coverage(records, surrogates)` puts them, for each CPU, to the service's
fallback policy (`serving.Server` and its `DEFAULT_POLICY`: the path `predict` takes), so a block
the surrogate is not trusted on is llvm-mca's, with the rule and the reason. llvm-mca also runs on
every block for the same CPU (`programs.LlvmMca`, the answer the fallback gives), and the
surrogate's own answers are scored against it: MAPE and Kendall's tau over the blocks the surrogate
answered, never over llvm-mca's answers behind its back (a fallback is not an answer).

`coverage_run` is the `coverage` command: the same, with the figures of each CPU logged as metrics
on an MLflow run of its own (`<mcpu>_answered_share`, `<mcpu>_mape_vs_mca`, ...) and the per-block
rows as its artifact `coverage.csv`.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from surrogate_ops.config import DEFAULT_MCPU, Source
from surrogate_ops.data import datasets
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.metrics import kendall_tau, mape
from surrogate_ops.programs.base import Result
from surrogate_ops.runtime.modeldir import ModelDir, bundled_names
from surrogate_ops.serving.policy import DEFAULT_POLICY, Block, Limits, Rule
from surrogate_ops.serving.server import Server

DEFAULT_LIMIT = 5000  # blocks per binary and per assembly file
UNREADABLE = "unreadable"  # the rule of a block neither the surrogate nor llvm-mca can read


def bundled_mcpus() -> list[str]:
    """The CPUs a surrogate ships for (haswell first): what `coverage` covers by default."""
    mcpus = [ModelDir.bundled(name).mcpu for name in bundled_names()]
    return sorted(filter(None, mcpus), key=lambda m: (m != DEFAULT_MCPU, m))


def read_blocks(binaries: Sequence[str | Path] = (), asm: Sequence[str | Path] = (), limit: int | None = DEFAULT_LIMIT,
                progress: bool = False) -> list[datasets.Record]:
    """The blocks of ELF binaries (files or directories; at most `limit` from each binary, spread over
    its code) and of assembly files (blocks separated by blank lines; the first `limit` of each), in
    order. A block that cannot be disassembled or read is kept, with its `error`."""
    records = datasets.gather(binaries=binaries, per_binary=limit, progress=progress) if binaries else []
    for path in asm:
        records += datasets.gather(asm=[path], limit=limit)
    if not records:
        raise SurrogateOpsError(f"no basic blocks in {', '.join(map(str, [*binaries, *asm])) or 'no source'}")
    return records


@dataclass(frozen=True)
class CpuCoverage:
    """One CPU's figures. `rows`, one per block: file, index, hex, block, mcpu, source (surrogate,
    llvm-mca or error), rule and reason (why not the surrogate), unknown_tokens, cycles (the
    answer, per 100 iterations), surrogate_cycles, mca_cycles (llvm-mca's, on every block it
    could run), mca_error, estimated_error."""

    mcpu: str
    model: str
    rows: pd.DataFrame

    @property
    def blocks(self) -> int:
        return len(self.rows)

    @property
    def answered(self) -> int:
        return int((self.rows["source"] == Source.SURROGATE).sum())

    @property
    def answered_share(self) -> float:
        return self.answered / self.blocks if self.blocks else 0.0

    def reasons(self) -> list[tuple[str, int]]:
        """The policy's rules (or `unreadable`) for the blocks the surrogate did not answer, with
        their counts, most frequent first."""
        return Counter(self.rows.loc[self.rows["source"] != Source.SURROGATE, "rule"]).most_common()

    def unknown_tokens(self) -> list[tuple[str, int]]:
        """Tokens outside the surrogate's vocabulary, each with the number of blocks it sent to llvm-mca."""
        sent = self.rows.loc[self.rows["rule"] == "unknown_tokens", "unknown_tokens"]
        return Counter(token for tokens in sent for token in set(tokens.split(" "))).most_common()

    @property
    def compared(self) -> pd.DataFrame:
        """The surrogate's own answers that llvm-mca also answered: what MAPE and tau are taken on."""
        rows = self.rows
        return rows[(rows["source"] == Source.SURROGATE) & np.isfinite(rows["mca_cycles"]) & (rows["mca_cycles"] > 0)]

    @property
    def mape_vs_mca(self) -> float | None:
        compared = self.compared
        return mape(compared["surrogate_cycles"], compared["mca_cycles"]) if len(compared) else None

    @property
    def tau_vs_mca(self) -> float | None:
        compared = self.compared
        return kendall_tau(compared["surrogate_cycles"], compared["mca_cycles"]) if len(compared) > 1 else None

    def metrics(self) -> dict[str, float]:
        """As MLflow metrics, each prefixed by the CPU: blocks, answered_share, compared_blocks,
        mape_vs_mca and tau_vs_mca (when there are answers to score), fallback_<rule> per rule."""
        m = {"blocks": self.blocks, "answered_share": self.answered_share, "compared_blocks": len(self.compared),
             "mape_vs_mca": self.mape_vs_mca, "tau_vs_mca": self.tau_vs_mca,
             **{f"fallback_{rule}": n for rule, n in self.reasons()}}
        return {f"{self.mcpu}_{k}": float(v) for k, v in m.items() if v is not None and np.isfinite(v)}


@dataclass(frozen=True)
class Coverage:
    """Every CPU's figures on the same blocks, and the MLflow run they went to (if any)."""

    cpus: list[CpuCoverage]
    sources: int  # binaries and assembly files the blocks came from
    run_id: str | None = None

    def metrics(self) -> dict[str, float]:
        return {k: v for cpu in self.cpus for k, v in cpu.metrics().items()}

    def frame(self) -> pd.DataFrame:
        return pd.concat([cpu.rows for cpu in self.cpus], ignore_index=True)

    def lines(self) -> list[str]:
        """The figures as a compact table, then why the rest went to llvm-mca."""
        blocks = self.cpus[0].blocks if self.cpus else 0
        out = [f"{blocks:,} blocks from {self.sources} source{'s' * (self.sources != 1)}; the surrogate's own answers "
               "against llvm-mca on the same blocks:",
               f"  {'cpu':<12}{'blocks':>8}{'answered':>10}{'MAPE':>9}{'tau':>8}{'scored':>8}"]
        for cpu in self.cpus:
            scored = "" if cpu.mape_vs_mca is None else f"{100 * cpu.mape_vs_mca:.2f}%"
            tau = "" if cpu.tau_vs_mca is None else f"{cpu.tau_vs_mca:.3f}"
            out.append(f"  {cpu.mcpu:<12}{cpu.blocks:>8,}{100 * cpu.answered_share:>9.1f}%{scored:>9}{tau:>8}"
                       f"{len(cpu.compared):>8,}")
        if any(cpu.reasons() for cpu in self.cpus):
            out.append("sent to llvm-mca instead (blocks per rule, most frequent first):")
        for cpu in self.cpus:
            if cpu.reasons():
                tokens = cpu.unknown_tokens()
                named = ", ".join(f"{t} {n:,}" for t, n in tokens[:8]) + (", ..." if len(tokens) > 8 else "")
                out.append(f"  {cpu.mcpu}: " + ", ".join(
                    f"{rule} {n:,}" + (f" ({named})" if rule == "unknown_tokens" and named else "")
                    for rule, n in cpu.reasons()))
        return out


class _Noting:
    """A policy's rules, each noting the block it sends to llvm-mca: its rule, reason and unknown tokens."""

    def __init__(self, policy: Sequence[Rule]):
        self.fired: dict[tuple[str, int], tuple[str, str, tuple[str, ...]]] = {}
        self.rules = tuple(self._noting(rule) for rule in policy)

    def _noting(self, rule: Rule) -> Rule:
        def check(block: Block, server: Server) -> str | None:
            reason = rule(block, server)
            if reason is not None:
                self.fired[block.mcpu, block.index] = (rule.__name__, reason, block.unknown)
            return reason

        check.__name__ = rule.__name__  # the name the service's tally counts under
        return check


def coverage(records: Sequence[datasets.Record], surrogates: Mapping[str, str | Path | ModelDir],
             policy: Sequence[Rule] = DEFAULT_POLICY, progress: bool = False) -> list[CpuCoverage]:
    """For each CPU (`surrogates`: the model directory answering for it), what the service would
    answer for every block under `policy`, llvm-mca's answer beside it, and the figures."""
    from surrogate_ops.programs import LlvmMca

    noting = _Noting(policy)
    models = {mcpu: ModelDir.open(model) for mcpu, model in surrogates.items()}
    for mcpu, model in models.items():
        if model.mcpu != mcpu:
            raise SurrogateOpsError(f"{model.path} imitates -mcpu={model.mcpu}, not {mcpu}")
    # a file is not a request: no block is refused for its length
    server = Server(list(models.values()), limits=Limits(max_instructions=1 << 30), policy=noting.rules)
    if server.load_error:
        raise SurrogateOpsError(f"a surrogate did not load: {server.load_error}")
    readable = [k for k, r in enumerate(records) if r.error is None]
    texts = [records[k].block for k in readable]
    out = []
    with tqdm(total=len(texts) * len(models), unit="block", disable=not progress) as bar:
        for mcpu, model in models.items():
            bar.set_description(f"{mcpu}: surrogate")
            answers = server.answer(texts, mcpu, fallback=False)  # untrusted blocks: an error naming the reason
            bar.set_description(f"{mcpu}: llvm-mca")
            mca = LlvmMca(mcpu).run(texts, progress=bar.update)
            rows = [_row(k, r, mcpu, {"error": r.error}, None, None)  # unreadable: neither could answer
                    for k, r in enumerate(records) if r.error is not None]
            for i, (answer, result) in enumerate(zip(answers, mca, strict=True)):
                rows.append(_row(readable[i], records[readable[i]], mcpu, answer, result, noting.fired.get((mcpu, i))))
            frame = pd.DataFrame(rows).sort_values("index", ignore_index=True)
            out.append(CpuCoverage(mcpu, str(model.path), frame))
    return out


def _row(index: int, record: datasets.Record, mcpu: str, answer: dict, result: Result | None,
         fired: tuple | None) -> dict:
    """One block's row: the surrogate's answer, or the rule that sent it to llvm-mca and llvm-mca's
    answer, or why it could not be read (`result` None: llvm-mca never saw it)."""
    ran = result is not None and result.ok
    row = {"file": record.source, "index": index, "hex": record.hex or "", "block": record.block or "", "mcpu": mcpu,
           "source": Source.SURROGATE, "rule": "", "reason": "", "unknown_tokens": "", "cycles": np.nan,
           "surrogate_cycles": answer.get("cycles", np.nan), "mca_cycles": result.cycles if ran else np.nan,
           "mca_error": result.error if result is not None and result.error else "",
           "estimated_error": answer.get("estimated_error", np.nan)}
    if fired is not None:  # the policy's: llvm-mca answers (its error if it cannot)
        rule, reason, unknown = fired
        row.update(source=Source.LLVM_MCA if ran else Source.ERROR, rule=rule, reason=reason,
                   unknown_tokens=" ".join(unknown), cycles=row["mca_cycles"])
    elif "cycles" not in answer:  # unreadable
        row.update(source=Source.ERROR, rule=UNREADABLE, reason=answer.get("error", ""))
    else:
        row["cycles"] = row["surrogate_cycles"]
    return row


def coverage_run(binaries: Sequence[str | Path], asm: Sequence[str | Path],
                 surrogates: Mapping[str, str | Path | ModelDir], limit: int | None = DEFAULT_LIMIT,
                 out: str | Path | None = None, log: bool = True, progress: bool = True) -> Coverage:
    """`coverage` of the blocks of `binaries` and `asm` (`read_blocks`); the per-block rows written
    to `out` (CSV) when given; with `log`, the figures logged on an MLflow run of its own: metrics
    per CPU (`CpuCoverage.metrics`), the sources, limit and models as parameters, and the artifacts
    coverage.csv and reasons.json (rules and unknown tokens per CPU)."""
    records = read_blocks(binaries, asm, limit, progress)
    sources = len({r.source for r in records})
    result = Coverage(coverage(records, surrogates, progress=progress), sources)
    if out is not None:
        result.frame().to_csv(out, index=False)
    if not log:
        return result
    import mlflow

    from surrogate_ops.registry import tracking

    names = [Path(p).name for p in [*binaries, *asm]]
    with tracking.start_run(run_name=f"coverage {', '.join(names)}"[:250]) as run:
        tracking.log_params({"binaries": ",".join(map(str, binaries))[:500], "asm": ",".join(map(str, asm))[:500],
                             "limit": limit or 0, "mcpus": ",".join(c.mcpu for c in result.cpus),
                             **{f"model_{c.mcpu}": c.model for c in result.cpus}})
        mlflow.set_tags({"surrogate_ops.step": "coverage"})
        mlflow.log_metrics(result.metrics())
        with tempfile.TemporaryDirectory() as tmp:
            result.frame().to_csv(Path(tmp) / "coverage.csv", index=False)
            reasons = {c.mcpu: {"rules": dict(c.reasons()), "unknown_tokens": dict(c.unknown_tokens())}
                       for c in result.cpus}
            (Path(tmp) / "reasons.json").write_text(json.dumps(reasons, indent=1))
            mlflow.log_artifacts(tmp)
    return Coverage(result.cpus, sources, run.info.run_id)
