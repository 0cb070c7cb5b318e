"""Per-instruction tables as a search space (programs.tables), labeling under sampled tables
(`collect --per-instruction`), the learned table that ships (`--params learned:haswell`) and the
table search (`optimize-table`), all through the real parametric llvm-mca."""

from __future__ import annotations

import json
import os
import subprocess

import mlflow
import numpy as np
import pandas as pd
import pytest
from support.cli import CLI, COMMAND_TIMEOUT, rows

from surrogate_ops.blocks.elf import blocks_from_binaries
from surrogate_ops.blocks.hexcode import disassemble
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.programs import LlvmMca, parametric, tables
from surrogate_ops.programs.llvm_mca import read_setting
from surrogate_ops.programs.setting import McaSetting


@pytest.fixture(scope="module")
def local_blocks() -> tuple[list[str], list[str]]:
    """(hex, canonical block) of every block cut from /usr/bin/ls that llvm-mca simulates."""
    pairs = blocks_from_binaries(["/usr/bin/ls"])
    hexes = [h for h, _ in pairs]
    blocks = disassemble(hexes).blocks
    stock = LlvmMca().run([b or "" for b in blocks])
    kept = [(h, b) for h, b, r in zip(hexes, blocks, stock, strict=True) if b and r.ok]
    return [h for h, _ in kept], [b for _, b in kept]


@pytest.fixture(scope="module")
def annotated(local_blocks):
    return parametric.annotate(LlvmMca().path, local_blocks[1])


@pytest.mark.slow  # every block of /usr/bin/ls under five tables
def test_sampled_tables_run_and_stock_entries_change_nothing(local_blocks, annotated):
    """Both samplers' tables run on every block (the driver never crashes on them: a table names
    only the resources that carry cycles of their own, and groups follow), the stock entries
    written out give stock cycles, and a table depends on its seed and index alone."""
    blocks = local_blocks[1]
    assert all(a is not None for a in annotated) and len(blocks) > 2000
    program = LlvmMca()
    stock = [r.cycles for r in program.run(blocks)]
    written = [{i.opcode: tables.entry_of(i) for i in a if not i.variant} for a in annotated]
    assert [r.cycles for r in program.run(blocks, tables=written)] == stock
    space = tables.TableSpace.of(annotated, "haswell")
    for mode in tables.SAMPLING:
        drawn = [tables.sample_block_table(a, mode, 7, k) for k, a in enumerate(annotated)]
        results = program.run(blocks, tables=drawn)
        assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
        changed = np.mean([c.cycles != s for c, s in zip(results, stock, strict=True)])
        assert changed > (0.3 if mode == "centred" else 0.8), (mode, changed)
        values = np.stack([space.values(t) for t in drawn[:300]])
        assert (values >= space.low).all() and (values <= space.high).all()
    # centred: about half the entries stay stock; an entry is the same for the same (seed, index)
    entries = [(o, e) for a in annotated[:500] for o, e in tables.sample_block_table(a, "centred", 7, 3).items()]
    stock_entries = {i.opcode: tables.entry_of(i) for a in annotated[:500] for i in a if not i.variant}
    same = np.mean([e == stock_entries[o] for o, e in entries])
    assert 0.4 < same < 0.8, same
    assert tables.sample_block_table(annotated[0], "wide", 7, 3) == tables.sample_block_table(annotated[0], "wide", 7, 3)
    assert any(tables.sample_block_table(a, "wide", 7, 3) != tables.sample_block_table(a, "wide", 7, 4)
               for a in annotated[:20])
    with pytest.raises(SurrogateOpsError, match="centred, wide"):
        tables.sample_block_table(annotated[0], "narrow", 0, 0)


def test_table_space_round_trips(annotated):
    space = tables.TableSpace.of(annotated, "haswell", min_count=5)
    assert 0 < len(space.opcodes) < len({i.opcode for a in annotated for i in a})
    assert not {i.opcode for a in annotated for i in a if i.variant} & set(space.opcodes)
    rng = np.random.default_rng(0)
    values = np.where(space.tunable, rng.integers(space.low, space.high + 1), space.defaults)
    table = space.table(values)
    assert (space.values(table) == values).all()
    assert space.table(space.defaults) == {}
    changes = tables.diff_entries(space.stock(table), table)
    assert len(changes) == int((values != space.defaults).sum())
    assert all(space.values(table)[space.row(c["opcode"]), space.columns.index(c["column"])] == c["learned"]
               for c in changes)
    again = tables.TableSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert again.opcodes == space.opcodes and (again.high == space.high).all() and (again.tunable == space.tunable).all()


@pytest.mark.system
def test_collect_labels_each_block_under_its_drawn_table(tmp_path, tiny_binary):
    out = tmp_path / "tables.parquet"
    proc = subprocess.run([*CLI, "collect", "--binary", str(tiny_binary), "--binary", "/usr/bin/ls", "--limit", "300",
                           "--sample-params", "1000", "--per-instruction", "wide", "--seed", "5", "--quiet",
                           "--out", str(out)], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert "random per-instruction tables (wide)" in proc.stdout
    frame = pd.read_parquet(out)
    assert len(frame) > 250 and {"table", "instructions", "setting"} <= set(frame.columns)
    for row in frame.sample(25, random_state=0).itertuples():
        table = json.loads(row.table)
        assert len(tables.parse_entries(row.instructions)) == row.block.count("\n") + 1
        again = LlvmMca(setting=McaSetting(table=table)).run([row.block])[0]
        assert again.cycles == row.mca_cycles_haswell
    proc = subprocess.run([*CLI, "collect", "--binary", str(tiny_binary), "--per-instruction", "centred",
                           "--out", str(tmp_path / "x.parquet")], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT)
    assert proc.returncode != 0 and "give --sample-params N as well" in proc.stderr
    # such labels train the per-instruction surrogate of optimize-table, never a plain one
    proc = subprocess.run([*CLI, "train", "--data", str(out), "--epochs", "1", "--quiet"], capture_output=True,
                          text=True, env={**os.environ, "SURROGATE_OPS_HOME": str(tmp_path / "home")},
                          timeout=COMMAND_TIMEOUT)
    assert proc.returncode != 0 and "optimize-table --labels" in proc.stderr


@pytest.mark.system
def test_the_learned_haswell_table_ships_and_runs_everywhere_params_go(tmp_path, local_blocks):
    learned = tables.learned_file("haswell")["per_instruction"]
    assert len(learned) > 20
    blocks = local_blocks[1][:400]
    asm = tmp_path / "blocks.s"
    asm.write_text("\n\n".join(blocks) + "\n")
    proc = subprocess.run([*CLI, "predict", "--program", "llvm-mca", "--params", "learned:haswell", "--input", str(asm)],
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    answered = [float(r["cycles"]) for r in rows(proc.stdout)]
    assert answered == [r.cycles for r in LlvmMca(setting=McaSetting(table=learned)).run(blocks)]
    assert answered != [r.cycles for r in LlvmMca().run(blocks)]
    proc = subprocess.run([*CLI, "predict", "--program", "llvm-mca", "--params", "learned:pentium", "--input", str(asm)],
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert proc.returncode != 0 and "no learned table 'pentium'" in proc.stderr and "haswell" in proc.stderr
    proc = subprocess.run([*CLI, "predict", "--program", "llvm-mca", "--mcpu", "skylake", "--params", "learned:haswell",
                           "--input", str(asm)], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert proc.returncode != 0 and "a table for -mcpu=haswell, not for skylake" in proc.stderr
    # collect labels with it too
    out = tmp_path / "learned.parquet"
    proc = subprocess.run([*CLI, "collect", "--asm", str(asm), "--params", "learned:haswell", "--quiet", "--out", str(out)],
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    frame = pd.read_parquet(out).set_index("block")
    assert [frame.loc[b, "mca_cycles_haswell"] for b in blocks[:50]] == answered[:50]


def test_every_table_that_ships_or_a_search_writes_passes_the_strict_check(tmp_path):
    """The learned tables that ship pass the check --params applies (against their own CPU's
    model); the ranges a search and the samplers draw from stop at MAX_VALUE even where a stock
    value is near it; and a table file in optimize-table's format is checked as strictly as any
    other when it is loaded back (its "_" notes left out)."""
    for cpu in ("haswell", "skylake"):
        assert read_setting(f"learned:{cpu}") == McaSetting(table=tables.learned_file(cpu)["per_instruction"], mcpu=cpu)
    with pytest.raises(SurrogateOpsError, match="no learned table '../haswell'"):
        read_setting("learned:../haswell")
    near = [[tables.Instruction("DIV64r", {"latency": 700, "uops": 600, "HWDivider": 800, "HWPort0": 900})]]
    space = tables.TableSpace.of(near, "haswell")
    assert space.high.max() == tables.MAX_VALUE
    highest = space.table(space.high)
    assert parametric.check_table(highest, LlvmMca().path, "haswell") == highest
    for mode in tables.SAMPLING:
        for k in range(50):
            parametric.check_table(tables.sample_block_table(near[0], mode, 0, k))
    path = tmp_path / "table.json"
    path.write_text(json.dumps(tables.table_file(highest, space.stock(space.opcodes), "haswell", run_id="r")))
    assert read_setting(str(path)) == McaSetting(table=highest, mcpu="haswell")
    path.write_text(json.dumps(tables.table_file({"DIV64r": {"latency": 1001}}, space.stock(space.opcodes), "haswell")))
    with pytest.raises(SurrogateOpsError, match=r"^--params .*table.json: per_instruction\['DIV64r'\]\['latency'\] "
                                                r"is 1001: a latency is whole cycles from 0 to 1000$"):
        read_setting(str(path))


@pytest.mark.system
def test_table_diff_lists_and_draws_every_change(tmp_path):
    learned = tables.learned_file("haswell")["per_instruction"]
    proc = subprocess.run([*CLI, "table-diff", "learned:haswell", "--csv", str(tmp_path / "d.csv"),
                           "--plot", str(tmp_path / "d.png")], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{len(learned)} opcodes changed")
    changes = pd.read_csv(tmp_path / "d.csv")
    assert set(changes["opcode"]) == set(learned) and (changes["stock"] != changes["learned"]).all()
    assert (tmp_path / "d.png").stat().st_size > 10_000
    row = changes.iloc[0]
    entry = learned[row["opcode"]]
    assert {**entry, **entry.get("ports", {})}[row["column"]] == row["learned"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"per_instruction": {}}))
    proc = subprocess.run([*CLI, "table-diff", str(bad)], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert proc.returncode != 0 and "not a learned table file" in proc.stderr


@pytest.mark.slow
@pytest.mark.system
def test_optimize_table_finds_a_planted_change_and_registers_its_table(tmp_path, local_blocks, annotated):
    """'Measured' throughputs are the driver's under a planted table (loads two cycles slower,
    shifts on a single port): the search must find a table that the real driver scores better
    than the stock one on its training sample, beat or match the stock table on held-out blocks,
    log every artifact and register the table with its figures. At this small budget one descent
    depends on its minibatch order (from the bundle of issue 31, seed 0's alone keeps the stock
    table, seeds 1 and 2 find the change): three restarts from seed 0 find it."""
    hexes, blocks = local_blocks
    planted = {"MOV64rm": {"latency": 7}, "MOV32rm": {"latency": 7}, "SHL64ri": {"ports": {"HWPort06": 2}}}
    measured = [r.cycles for r in LlvmMca(setting=McaSetting(table=planted)).run(blocks)]
    csv = tmp_path / "measured.csv"
    pd.DataFrame({"hex": hexes, "throughput": measured}).to_csv(csv, index=False)
    home = tmp_path / "home"
    env = {**os.environ, "SURROGATE_OPS_HOME": str(home)}
    labels = tmp_path / "labels.parquet"
    proc = subprocess.run([*CLI, "collect", "--bhive", str(csv), "--split", "train", "--sample-params", "100000",
                           "--per-instruction", "centred", "--quiet", "--out", str(labels)],
                          capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    table_out = tmp_path / "table.json"
    proc = subprocess.run([*CLI, "optimize-table", "--data", str(csv), "--labels", str(labels), "--min-count", "5",
                           "--epochs", "3", "--steps", "150", "--checks", "3", "--search-blocks", "300",
                           "--restarts", "3", "--baseline", "optuna", "--seed", "0", "--quiet", "--out", str(table_out)],
                          capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert "registered llvm-mca-haswell-table v1" in proc.stdout
    learned = json.loads(table_out.read_text())["per_instruction"]
    assert learned, proc.stdout
    store = f"sqlite:///{home / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)  # an earlier test may set another registry
    run = client.get_run(proc.stdout.split("MLflow run ")[1].split()[0])
    m = run.data.metrics
    assert m["surrogate_objective"] < m["defaults_objective"]
    assert m["surrogate_test_mape"] <= m["defaults_test_mape"]
    # the baseline spent the surrogate's budget, to within one trial of 300 blocks
    assert 0 <= m["surrogate_evaluations"] - m["optuna_evaluations"] < 300 and m["optuna_evaluations"] > 3000
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"table.json", "tables.json", "space.json", "diff.csv", "diff.png", "optimization.png"} <= artifacts
    logged = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/table.json"))
    assert logged["per_instruction"] == learned and logged["_mcpu"] == "haswell"
    assert set(logged["_stock"]) == set(learned)
    version = client.get_model_version("llvm-mca-haswell-table", "1")
    assert float(version.tags["test_mape"]) == pytest.approx(m["surrogate_test_mape"], abs=1e-4)
    # the written table is what --params takes, loaded back through its strict check
    assert LlvmMca(setting=McaSetting(table=learned)).run([blocks[0]])[0].ok
    assert read_setting(str(table_out), ("haswell",)) == McaSetting(table=learned, mcpu="haswell")


def test_a_per_instruction_surrogate_starts_as_its_parent_and_reads_each_entry(annotated, local_blocks):
    """Wrapped around the bundled surrogate, the per-instruction model answers as the parent does
    whatever the entries (its new layers start at zero); one step of training on a changed
    latency makes its answer depend on that instruction's entry."""
    import torch

    from surrogate_ops import models, registry
    from surrogate_ops.blocks.batching import pad
    from surrogate_ops.runtime.inference import Predictor
    from surrogate_ops.search import table_search

    predictor = Predictor(registry.open(registry.served(None)[0]).model, engine="torch")
    space = tables.TableSpace.of(annotated, "haswell")
    surrogate = table_search.TableSurrogate(predictor, space)
    blocks = local_blocks[1][:64]
    encoded, keep = surrogate.tokens(blocks, annotated[:64])
    tokens = torch.from_numpy(pad(encoded))
    stock = torch.zeros(len(keep), tokens.shape[1], len(space.columns))
    for k, i in enumerate(keep):
        stock[k, : len(annotated[i])] = torch.from_numpy(space.features(annotated[i]))
    parent = models.network(predictor.model.module())  # the cycles network, its error head left behind
    with torch.no_grad():
        expected = parent(tokens)
        assert torch.allclose(surrogate.model(tokens, stock), expected, rtol=1e-5)
        assert torch.allclose(surrogate.model(tokens, stock + 0.5), expected, rtol=1e-5)
    optimizer = torch.optim.Adam(surrogate.model.parameters(), lr=1e-2)
    loss = (surrogate.model(tokens, stock + 0.5) - 2 * expected).abs().mean()
    loss.backward()
    optimizer.step()
    surrogate.model.eval()
    real = (tokens[:, :, :1] != 0).float()
    with torch.no_grad():
        trained = surrogate.model(tokens, stock)
        assert not torch.allclose(surrogate.model(tokens, stock + 0.5), trained)
        # what sits in padding rows changes nothing, and a block answers alone as it does in a batch
        assert torch.allclose(surrogate.model(tokens, stock + 3.0 * (1 - real)), trained, rtol=1e-5)
        k = int(real.sum((1, 2)).argmin())
        n = int(real[k].sum())
        alone = surrogate.model(tokens[k:k + 1, :n], stock[k:k + 1, :n])
        assert torch.allclose(alone, trained[k:k + 1], rtol=1e-4)
