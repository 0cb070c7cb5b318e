"""The tokenizer: canonical tokens, vocabulary round trip, unknown tokens, extension, caching."""

from __future__ import annotations

from surrogate_ops.tokenizer import UNK, Tokenizer, instruction_tokens


def test_instruction_tokens():
    assert instruction_tokens("addq $8, 16(%rsp,%rax,4)") == ["addq", "$8", ",", "[", "%rsp", "%rax", "*4", "DISP", "]"]
    assert instruction_tokens("lock addq %rax, (%rdi)") == ["lock", "addq", "%rax", ",", "[", "%rdi", "]"]
    assert instruction_tokens("movl $4294967295, %fs:40") == ["movl", "$IMM", ",", "[", "%fs:", "DISP", "]"]
    assert instruction_tokens("movq -8(,%rax,8), %rcx") == ["movq", "[", "_", "%rax", "*8", "DISP", "]", ",", "%rcx"]
    assert instruction_tokens("vaddps %zmm1, %zmm2, %zmm3 {%k1} {z}")[-3:] == ["%zmm3", "{%k1}", "{z}"]
    assert instruction_tokens("cltq") == ["cltq"]


def test_vocabulary_round_trip_and_unknown(tmp_path, fixture_blocks):
    tok = Tokenizer.build(b["block"] for b in fixture_blocks)
    path = tmp_path / "vocab.json"
    tok.save(path)
    again = Tokenizer.load(path)
    assert again.vocab == tok.vocab
    block = fixture_blocks[0]["block"]
    assert again.encode_block(block) == tok.encode_block(block)
    assert UNK not in tok.unknown(block) and tok.unknown(block) == []
    ids = tok.encode_block("bswapq %r13")
    assert ids[0][0] == tok.vocab[UNK]
    assert tok.unknown("bswapq %r13") == ["bswapq", "%r13"]


def test_extend_keeps_learned_ids(fixture_blocks):
    tok = Tokenizer.build(b["block"] for b in fixture_blocks[:3])
    before = dict(tok.vocab)
    added = tok.extend(b["block"] for b in fixture_blocks)
    assert added and all(tok.vocab[t] == i for t, i in before.items())
    assert sorted(tok.vocab.values()) == list(range(len(tok)))
    assert tok.unknown(fixture_blocks[-1]["block"]) == []


def test_encoding_is_cached_and_truncated():
    tok = Tokenizer.build(["addq %rax, %rbx"], max_tokens=3)
    first = tok.encode_instruction("addq %rax, %rbx")
    assert len(first) == 3
    assert tok.encode_instruction("addq %rax, %rbx") is first
