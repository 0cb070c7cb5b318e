"""Def-use edges on small hand-made blocks, and the tokens that carry them to the model."""

from __future__ import annotations

import numpy as np
import torch

from surrogate_ops import models
from surrogate_ops.blocks import batching
from surrogate_ops.blocks.deps import edges, effects
from surrogate_ops.blocks.tokenizer import Tokenizer


def found(block: str) -> set[tuple[int, int, str]]:
    return {(e.consumer, e.producer, e.kind) for e in edges(block)}


def test_a_pointer_chase_has_a_loop_carried_edge():
    assert found("movq (%rax), %rax") == {(0, 0, "reg-carried")}
    assert found("movq 8(%rdi), %rdi\naddq $1, %rcx") == {(0, 0, "reg-carried"), (1, 1, "reg-carried")}


def test_independent_instructions_have_none():
    assert found("movq %rax, %rbx\nmovq %rcx, %rdx\nleaq 8(%rsi), %rdi") == set()
    assert found("vaddps %ymm0, %ymm1, %ymm2") == set()  # VEX three-operand: the destination is only written


def test_chains_within_and_across_iterations():
    assert found("vaddps %ymm0, %ymm1, %ymm2\nvaddps %ymm2, %ymm3, %ymm4") == {(1, 0, "reg")}
    # a three-instruction cycle: each reads the one before, the first reads the last of the previous iteration
    cycle = found("addq %rax, %rbx\naddq %rbx, %rcx\naddq %rcx, %rax")
    assert {(1, 0, "reg"), (2, 1, "reg"), (0, 2, "reg-carried")} <= cycle
    assert found("imulq %rcx, %rdx") == {(0, 0, "reg-carried")}
    assert (1, 0, "reg") in found("cmpq %rax, %rbx\ncmovlq %rcx, %rdx")  # flags


def test_zero_idioms_and_implicit_operands():
    assert found("xorl %eax, %eax\nincl %eax") == {(1, 0, "reg")}  # xor of itself reads nothing
    divide = effects("divq %rcx")
    assert divide.reads >= {"rax", "rdx", "rcx"} and divide.writes >= {"rax", "rdx"}
    assert effects("movb %al, %bl").reads >= {"rbx"}  # an 8-bit write merges with the old value
    assert effects("movl %eax, %ebx").reads == {"rax"}  # a 32-bit write replaces it


def test_memory_edges_pair_a_store_with_a_load_of_the_same_address():
    assert (1, 0, "mem") in found("movq %rax, 8(%rdi)\nmovq 8(%rdi), %rbx")
    assert not any(kind.startswith("mem") for _, _, kind in found("movq %rax, 8(%rdi)\nmovq 16(%rdi), %rbx"))
    assert (0, 0, "mem-carried") in found("addq $1, (%rdi)")


def test_the_dep_model_reads_back_the_edges_the_tokenizer_wrote():
    blocks = ["movq (%rax), %rax", "addq %rax, %rbx\naddq %rbx, %rcx\naddq %rcx, %rax", "movq %rax, %rbx"]
    config = models.build("dep", vocab_size=2, preset="tiny").config
    tokenizer = Tokenizer.build(blocks, **models.tokenizer_options(config))
    assert Tokenizer.from_dict(tokenizer.to_dict()).to_dict() == tokenizer.to_dict()
    model = models.build("dep", vocab_size=len(tokenizer), preset="tiny")
    matrix, _ = model.edges(torch.from_numpy(batching.pad([tokenizer.encode_block(b) for b in blocks])))
    kinds = ("reg", "reg-carried", "mem", "mem-carried")
    for b, block in enumerate(blocks):
        expected = np.zeros(matrix.shape[1:])
        for consumer, producer, kind in found(block):
            expected[kinds.index(kind), consumer, producer] = 1
        assert np.array_equal(matrix[b].numpy(), expected)
