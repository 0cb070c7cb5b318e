"""Real code: the bundled surrogates answer the instruction classes of compiled and hand-written
SIMD code themselves (issue 31), through the same policy `predict` and the service follow."""

from __future__ import annotations

import pytest

from surrogate_ops.programs import LlvmMca
from surrogate_ops.runtime.modeldir import ModelDir
from surrogate_ops.serving.server import Server

# One block per instruction class that real libraries hold and BHive does not (or barely does)
CLASSES = {
    "rip-relative": "movq 4096(%rip), %rax\naddq %rax, 24(%rip)\nleaq 64(%rip), %rdi",
    "segment": "movq %fs:40, %rax\nxorq %fs:40, %rdx",
    "rep string": "rep stosq %rax, %es:(%rdi)",
    "sse integer": "punpckhwd %xmm1, %xmm0\npmuludq %xmm2, %xmm0\npaddq %xmm0, %xmm3\npsrlq $4, %xmm3\n"
                   "pcmpeqw %xmm3, %xmm4\npaddsw %xmm4, %xmm5\npmaxsw %xmm5, %xmm6",
    "avx2 integer": "vpbroadcastd %xmm0, %ymm1\nvinserti128 $1, %xmm2, %ymm1, %ymm1\nvpmaddubsw %ymm1, %ymm3, %ymm4\n"
                    "vpmulhrsw %ymm4, %ymm5, %ymm5",
    "crypto": "aesenc %xmm1, %xmm0\naesenc %xmm2, %xmm0\naesenclast %xmm3, %xmm0\npclmulqdq $17, %xmm4, %xmm5",
    "double shifts and rotates": "shldq $7, %rax, %rdx\nshrdl %cl, %ebx, %esi\nrolq $13, %r8\nrorl $3, %r9d",
    "bmi2": "rorxq $17, %rax, %rbx\nmulxq %rcx, %rsi, %rdi\naddq %rsi, %rbx",
    "exchange": "xchgq %rax, %rbx\naddq %rbx, %rcx",
    "16-bit cmov": "cmpw %ax, %bx\ncmovew %cx, %dx",
    "byte registers": "movb %spl, %al\naddb %sil, %dil\nmovzbl %r9b, %eax",
    "unsuffixed imul": "imul %rcx, %rdx",
}
SIMD_FREE_CPUS = {"ivybridge": ("avx2 integer", "bmi2")}  # no AVX2 or BMI2 there: llvm-mca's model still runs them


@pytest.fixture(scope="module", params=["haswell", "skylake", "ivybridge", "znver2", "znver3"])
def served(request):
    mcpu = request.param
    return mcpu, Server(ModelDir.bundled(f"llvm-mca-{mcpu}"))


def test_every_instruction_class_is_answered_by_the_surrogate(served):
    mcpu, server = served
    names = [n for n in CLASSES if n not in SIMD_FREE_CPUS.get(mcpu, ())]
    answers = server.answer([CLASSES[n] for n in names], mcpu, fallback=False)
    refused = {n: a.get("error") for n, a in zip(names, answers, strict=True) if a.get("source") != "surrogate"}
    assert not refused, f"{mcpu}: {refused}"
    # near llvm-mca on most classes; the weak spots (the closing note has them): a long chain of AVX2
    # integer ops on Intel (47-62% under), and znver2's `shrdl %cl`, which llvm-mca's model costs at
    # 100 cycles, a placeholder the surrogate does not reproduce
    mca = [r.cycles for r in LlvmMca(mcpu).run([CLASSES[n] for n in names])]
    errors = sorted(abs(a["cycles"] - m) / m for a, m in zip(answers, mca, strict=True))
    assert errors[len(errors) // 2] < 0.15 and errors[3 * len(errors) // 4] < 0.35, f"{mcpu}: {errors}"


@pytest.mark.slow  # labels 2,800 blocks of 8 programs, trains 4 epochs
def test_a_held_out_library_is_covered_by_a_small_model(fresh_home, tmp_path):
    """Train a tiny surrogate on blocks of a few programs, then measure a library it never saw
    (zlib): the surrogate answers nearly all of it itself, and backoff is what makes the difference."""
    import json
    import shutil

    from surrogate_ops.blocks.tokenizer import FORMAT_V1
    from surrogate_ops.data import datasets
    from surrogate_ops.serving.coverage import coverage, read_blocks
    from surrogate_ops.training.train import TrainConfig, train

    programs = [f"/usr/bin/{p}" for p in ("ls", "grep", "tar", "sed", "find", "diff", "make", "ssh")]
    data = tmp_path / "programs.parquet"
    datasets.collect(data, binaries=programs, per_binary=350, exclude=["*libz*"], progress=False)
    result = train(TrainConfig(str(data), arch="dep", preset="tiny", epochs=4, threads=2), progress=False)
    held_out = read_blocks(["/usr/lib/x86_64-linux-gnu/libz.so.1"], limit=400)
    assert not set(r.block for r in held_out) - {None} <= set(datasets.load(data)["block"])
    (cpu,) = coverage(held_out, {"haswell": result.model.path})
    taken = cpu.rows[cpu.rows["mca_cycles"] > 0]
    share = (taken["source"] == "surrogate").mean()
    # the same network without backoff (a v1 vocabulary): every unseen mnemonic or register refuses the block
    plain = tmp_path / "v1"
    shutil.copytree(result.model.path, plain)
    vocab = json.loads((plain / "vocab.json").read_text())
    (plain / "vocab.json").write_text(json.dumps({**vocab, "format": FORMAT_V1}))
    (before,) = coverage(held_out, {"haswell": plain})
    before_share = (before.rows.loc[taken.index, "source"] == "surrogate").mean()
    assert share >= 0.95 and share > before_share, (share, before_share, cpu.reasons())
    assert cpu.mape_vs_mca is not None and cpu.mape_vs_mca < 0.5  # four epochs on 2,800 blocks: near, not close
