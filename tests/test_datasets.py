"""`collect`: labeled Parquet datasets from real sources, with rejects listed and resumable runs."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest
from support.cli import CLI, COMMAND_TIMEOUT, interruptible
from support.data import FIXTURES

from surrogate_ops.data import datasets
from surrogate_ops.programs import LlvmMca


def test_collect_from_asm_and_binary(tmp_path, tiny_binary, fixture_blocks):
    asm = tmp_path / "blocks.s"
    asm.write_text((FIXTURES / "blocks.s").read_text() + "\n\nfoo %rax, %rbx\n\n.incbin \"/etc/passwd\"\n")
    out = tmp_path / "ds.parquet"
    result = datasets.collect(out, asm=[asm], binaries=[tiny_binary], mcpus=["haswell", "skylake"], progress=False)
    frame = datasets.load(out)
    assert result.rows == len(frame) and not (tmp_path / "ds.parquet.partial").exists()
    assert {"block", "hex", "source", "measured", "split", "mca_cycles_haswell", "mca_cycles_skylake"} <= set(frame)
    from_asm = frame[frame["source"] == str(asm)]
    assert list(from_asm["block"]) == [b["block"] for b in fixture_blocks]
    for mcpu in ("haswell", "skylake"):
        expected = [r.cycles for r in LlvmMca(mcpu=mcpu).run(list(from_asm["block"]))]
        assert list(from_asm[f"mca_cycles_{mcpu}"]) == expected
    from_binary = frame[frame["source"] == str(tiny_binary)]
    assert len(from_binary) > 3 and from_binary["hex"].notna().all()
    assert frame["measured"].isna().all()
    assert list(frame["split"]) == [datasets.split_of(b) for b in frame["block"]]
    # the two bad blocks are listed with their reasons, not silently dropped
    rejected = (tmp_path / "ds.rejected.csv").read_text()
    assert "invalid instruction mnemonic 'foo'" in rejected and "directive '.incbin'" in rejected
    assert result.rejected == 2
    meta = pq.read_schema(out).metadata
    assert meta[b"surrogate_ops.program"] == b"llvm-mca" and meta[b"surrogate_ops.mcpus"] == b"haswell,skylake"


def test_collect_bhive_format_with_measurements(tmp_path, fixture_blocks):
    data = tmp_path / "bhive"
    data.mkdir()
    rows = ["hex,throughput"] + [f"{b['hex']},{b['haswell']['cycles'] * 1.1:.1f}" for b in fixture_blocks]
    (data / "hsw.csv").write_text("\n".join(rows) + "\n")
    (data / "may-alias.csv").write_text(fixture_blocks[0]["hex"] + "\n")
    out = tmp_path / "hsw.parquet"
    datasets.collect(out, bhive=[data / "hsw.csv"], progress=False)
    frame = datasets.load(out)
    assert list(frame["hex"]) == [b["hex"] for b in fixture_blocks]
    assert list(frame["block"]) == [b["block"] for b in fixture_blocks]
    assert (frame["measured_mcpu"] == "haswell").all() and frame["measured"].notna().all()
    assert list(frame["may_alias"]) == [True] + [False] * (len(fixture_blocks) - 1)
    text = datasets.summary(frame)
    assert f"measured on haswell: {len(fixture_blocks) - 1} blocks (may-alias excluded)" in text
    assert "llvm-mca error 9.1% MAPE" in text  # measured = 1.1 x llvm-mca: |1 - 1.1| / 1.1


def test_split_is_by_block_and_balanced():
    blocks = [f"addq ${i}, %rax\nimulq %rcx, %rdx" for i in range(4000)]
    counts = Counter(datasets.split_of(b) for b in blocks)
    assert 0.77 < counts["train"] / 4000 < 0.83 and 0.08 < counts["test"] / 4000 < 0.12
    assert datasets.split_of(blocks[5]) == datasets.split_of(str(blocks[5]))


@pytest.mark.slow
@pytest.mark.system
def test_interrupted_collection_resumes(tmp_path):
    out = tmp_path / "bin.parquet"
    args = [*CLI, "collect", "--binary", "/usr/bin", "--limit", "3000", "--mcpu", "haswell", "--mcpu", "skylake",
            "--mcpu", "ivybridge", "--workers", "1", "--part-rows", "200", "--quiet", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    partial = tmp_path / "bin.parquet.partial"
    deadline = time.time() + 120
    while not list(partial.glob("part-*.parquet")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    written = len(list(partial.glob("part-*.parquet")))
    assert written >= 1 and not out.exists()

    other = subprocess.run([*args, "--mcpu", "skylake-avx512"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert other.returncode == 2 and "interrupted collection with other settings" in other.stderr
    assert len(list(partial.glob("part-*.parquet"))) == written  # nothing lost
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{written * 200:,} resumed from an earlier run" in resumed.stdout
    fresh = tmp_path / "fresh.parquet"
    subprocess.run([*args[:-1], str(fresh)], check=True, capture_output=True, timeout=COMMAND_TIMEOUT)
    a, b = datasets.load(out), datasets.load(fresh)
    assert len(a) == 3000 and a["hex"].is_unique
    assert a.equals(b)


def test_default_source_is_local_binaries(tmp_path):
    result = datasets.collect(tmp_path / "d.parquet", limit=50, progress=False)
    frame = datasets.load(result.path)
    assert len(frame) == 50 and frame["source"].str.startswith("/").all()


def test_a_block_some_cpus_refuse_keeps_the_others_labels(tmp_path):
    """AVX-512 code has no Haswell label (llvm-mca's Haswell model refuses it) but keeps its Ivy
    Bridge one (whose model is incomplete and takes it); a block every CPU refuses is rejected."""
    asm = tmp_path / "avx512.s"
    asm.write_text("vmovdqa32 %zmm1, %zmm2 {%k1}\nvpaddd %zmm2, %zmm3, %zmm3\n\naddq %rax, %rbx\n")
    frame = datasets.load(datasets.collect(tmp_path / "ds.parquet", asm=[asm], mcpus=["haswell", "ivybridge"],
                                           progress=False).path)
    zmm = frame[frame["block"].str.startswith("vmovdqa32")].iloc[0]
    assert zmm["mca_cycles_ivybridge"] > 0 and zmm["mca_cycles_haswell"] != zmm["mca_cycles_haswell"]  # NaN
    assert frame[frame["block"] == "addq %rax, %rbx"][["mca_cycles_haswell", "mca_cycles_ivybridge"]].notna().all(axis=None)
    frame = datasets.load(datasets.collect(tmp_path / "both.parquet", asm=[asm], mcpus=["haswell", "skylake"],
                                           progress=False).path)
    assert list(frame["block"]) == ["addq %rax, %rbx"]
    assert "-mcpu=haswell" in (tmp_path / "both.rejected.csv").read_text()


def test_combine_keeps_every_cpus_labels_and_leaves_held_out_blocks_out(tmp_path):
    one, two, held = (tmp_path / f"{n}.s" for n in ("one", "two", "held"))
    one.write_text("addq %rax, %rbx\n\nimulq %rcx, %rdx\n")
    two.write_text("addq %rax, %rbx\n\nvaddps %ymm0, %ymm1, %ymm2\n")
    held.write_text("imulq %rcx, %rdx\n")
    a = datasets.collect(tmp_path / "a.parquet", asm=[one], mcpus=["haswell"], progress=False).path
    b = datasets.collect(tmp_path / "b.parquet", asm=[two], mcpus=["znver3"], progress=False).path
    h = datasets.collect(tmp_path / "h.parquet", asm=[held], mcpus=["haswell"], progress=False).path
    kept, dropped = datasets.combine([a, b], tmp_path / "mix.parquet", leave_out=[h])
    mix = datasets.load(tmp_path / "mix.parquet")
    assert (kept, dropped) == (3, 1) and "imulq %rcx, %rdx" not in set(mix["block"])
    assert datasets.mcpus_of(mix) == ["haswell", "znver3"] and mix.attrs["mcpus"] == "haswell,znver3"
    assert mix.attrs["program_version"] == datasets.load(a).attrs["program_version"]
    added = mix[mix["block"] == "addq %rax, %rbx"]  # a row per source, each with its own CPU's label
    assert added["mca_cycles_haswell"].notna().sum() == 1 and added["mca_cycles_znver3"].notna().sum() == 1



def test_a_write_that_fails_midway_leaves_the_old_dataset_and_no_temporary_file(tmp_path, fixture_blocks):
    """`files.written`, as every dataset, part, checkpoint and CSV is written: a rewrite that fails
    after writing half a file keeps the dataset that was there, whole, and leaves nothing beside
    it; a rewrite that succeeds replaces it."""
    from surrogate_ops.files import written

    out = tmp_path / "ds.parquet"
    datasets.collect(out, asm=[FIXTURES / "blocks.s"], mcpus=["haswell"], progress=False)
    before = datasets.load(out)
    with pytest.raises(KeyboardInterrupt), written(out) as tmp:
        tmp.write_bytes(out.read_bytes()[:100])
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds.parquet"]
    assert datasets.load(out).equals(before)
    datasets._write(before.head(3), out, {})
    assert len(datasets.load(out)) == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["ds.parquet"]
