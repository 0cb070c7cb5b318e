"""The end-to-end prediction path: line cache, bucketing and padding, errors, unknown tokens."""

from __future__ import annotations

import numpy as np

from surrogate_ops.blocks.batching import buckets, pad
from surrogate_ops.registry.versions import BUNDLED
from surrogate_ops.runtime.inference import Predictor


def test_pad_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    blocks = [[tuple(int(x) for x in rng.integers(1, 100, rng.integers(1, 10))) for _ in range(rng.integers(1, 20))]
              for _ in range(300)]
    reference = np.zeros((300, max(map(len, blocks)), max(len(i) for b in blocks for i in b)), dtype=np.int64)
    for i, block in enumerate(blocks):
        for j, ids in enumerate(block):
            reference[i, j, : len(ids)] = ids
    assert np.array_equal(pad(blocks), reference)
    batches = buckets(blocks, batch_size=32, token_budget=2000)
    assert sorted(np.concatenate(batches).tolist()) == list(range(300))
    assert all(len(b) <= 32 for b in batches)


def test_predictions_keep_order_and_name_bad_blocks(fixture_blocks):
    predictor = Predictor(BUNDLED)
    good = [b["block"] for b in fixture_blocks]
    blocks = [good[0], ".include \"x\"", "lock\naddq %rax, (%rdi)", "\n".join(["addq %rax, %rbx"] * 65), "",
              "  addq\t%rax,%rbx\n\n imulq %rcx,  %rdx ", good[1]]
    out = predictor.predict(blocks)
    alone = predictor.predict([good[0], good[1], "lock addq %rax, (%rdi)"])
    assert out[0] == alone[0] and out[6] == alone[1]
    assert out[2].cycles == alone[2].cycles  # a prefix on its own line joins the next instruction
    assert out[5].cycles == out[0].cycles  # same block, other spacing
    assert "directive '.include'" in out[1].error and out[1].error.startswith("block 1, line 1")
    assert "more than the limit of 64" in out[3].error and "empty block" in out[4].error
    # one at a time through every engine path gives the same numbers as the batch
    assert np.allclose(predictor.cycles(good), [predictor.cycles([b])[0] for b in good], rtol=1e-5)


def test_unknown_tokens_are_named():
    predictor = Predictor(BUNDLED)
    strange = "vp2intersectd %zmm29, %zmm30, %k7"
    assert set(predictor.tokenizer.unknown(strange)) - {","}, "precondition: tokens outside the vocabulary"
    [prediction] = predictor.predict([strange])
    assert prediction.cycles is not None and set(prediction.unknown) == set(predictor.tokenizer.unknown(strange))
    [known] = predictor.predict(["addq %rax, %rbx"])
    assert known.unknown == ()


def test_overlapped_and_side_by_side_batching_give_the_same_answers_in_order():
    """Padding the next batch beside the running one (the GPU path), or running batches side by
    side on threads (CPU engines on many cores), changes nothing but timing."""
    from surrogate_ops.blocks.batching import run_batched
    from surrogate_ops.blocks.generate import generate

    predictor = Predictor(BUNDLED)
    encoded = [predictor.encode(text, i)[0] for i, text in enumerate(generate(700, seed=21))]
    calls = []

    def engine(tokens: np.ndarray) -> np.ndarray:
        calls.append(len(tokens))
        return predictor.engine(tokens)

    plain = run_batched(engine, encoded, batch_size=64)
    overlapped = run_batched(engine, encoded, batch_size=64, overlap=True)
    side_by_side = run_batched(engine, encoded, batch_size=64, lanes=3)
    assert len(calls) > 3 * 10 and max(calls) <= 64
    assert np.array_equal(plain, overlapped) and np.array_equal(plain, side_by_side)
    assert plain.shape == (700, 2)  # the bundled surrogates are confident: cycles, then estimated error
    assert np.allclose(plain[:, 0], predictor.predict_encoded(encoded), rtol=1e-5)  # other batch sizes, same answers


def test_flat_blocks_pad_and_bucket_as_lists_do():
    from surrogate_ops.blocks.batching import Flat, buckets, pad
    from surrogate_ops.blocks.generate import generate

    tokenizer = Predictor(BUNDLED).tokenizer
    encoded = [tokenizer.encode_block(b) for b in generate(600, seed=22) + generate(200, seed=22, density="loops")]
    flat = Flat.concat([Flat.of(encoded[:333]), Flat.of(encoded[333:])])
    assert [list(b) for b in buckets(flat, 64)] == [list(b) for b in buckets(encoded, 64)]
    for index in [*buckets(encoded, 64), np.random.default_rng(0).permutation(len(encoded))[:100]]:
        assert np.array_equal(flat.take(index), pad([encoded[i] for i in index]))


def test_worker_processes_encode_a_large_call_as_one_process_does(monkeypatch):
    """Without the compiled front end, past PARALLEL_MIN blocks the encoding runs in worker
    processes: the same answers, errors (named by their place) and unknown tokens, in order, and
    again from the workers' warm caches."""
    from surrogate_ops.blocks.generate import generate

    monkeypatch.setenv("SURROGATE_OPS_FRONTEND", "python")
    from surrogate_ops.runtime.inference import PARALLEL_MIN

    blocks = generate(PARALLEL_MIN, seed=23, max_instructions=16)
    blocks[5], blocks[-3] = "bogus %rax, %rbx", "\n".join(["addq %rax, %rbx"] * 80)
    blocks[PARALLEL_MIN // 2] = "invlpg (%rax)"
    alone = Predictor(BUNDLED, workers=1).predict(blocks)
    parallel = Predictor(BUNDLED, workers=2)
    assert parallel.predict(blocks) == alone and parallel.predict(blocks) == alone
    assert parallel._pool is not None
    assert alone[-3].error == f"block {PARALLEL_MIN - 3}: 80 instructions, more than the limit of 64"
    parallel.close()


def test_the_optimized_graph_is_kept_and_answers_as_the_model_itself(fixture_blocks, tmp_path, monkeypatch):
    """ONNX Runtime's optimized graph of a model is written once to the build cache and loaded from
    it after (a one-block predict then skips folding the token table); the answers are those of a
    session that optimizes the model in memory at ONNX Runtime's default level. A damaged cached
    graph is optimized again; a cache that cannot be written costs speed only."""
    import shutil

    import onnx
    import onnxruntime as ort

    from surrogate_ops.blocks.batching import Flat
    from surrogate_ops.runtime import engines
    from surrogate_ops.runtime.modeldir import ModelDir

    monkeypatch.setattr(engines, "BUILD_CACHE", tmp_path / "cache")
    predictor = Predictor(BUNDLED)
    tokens = Flat.of([predictor.encode(b["block"], i)[0] for i, b in enumerate(fixture_blocks)])
    tokens = tokens.take(np.arange(len(tokens)))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    plain = ort.InferenceSession(str(predictor.model.onnx), options, providers=["CPUExecutionProvider"])
    reference = plain.run(None, {"tokens": tokens})[0]
    whole = engines.onnx_engine(predictor.model, whole=True)
    assert np.array_equal(whole(tokens), reference)
    kept = {path.stat().st_size: path for path in (tmp_path / "cache").glob("ort-*.onnx")}
    assert len(kept) == 2  # the graph from a batch's parts, and the graph from tokens
    written = {path: path.stat().st_mtime_ns for path in kept.values()}
    assert np.array_equal(engines.onnx_engine(predictor.model, whole=True)(tokens), reference)
    assert {path: path.stat().st_mtime_ns for path in kept.values()} == written  # read, not rewritten
    damaged = kept[max(kept)]
    damaged.write_bytes(b"not a graph")
    assert np.array_equal(engines.onnx_engine(predictor.model, whole=True)(tokens), reference)
    assert damaged.stat().st_size > 1000  # optimized and kept again
    # over the cache's budget (room for two graphs here), the least recently used goes: the graph
    # from parts, read again now, stays; the graph from tokens, last used before it, is dropped
    engines.onnx_engine(predictor.model)
    monkeypatch.setattr(engines, "ORT_CACHE_BYTES", 2 * max(kept) + 1000)
    other = tmp_path / "other"
    shutil.copytree(predictor.model.path, other, ignore=shutil.ignore_patterns("parts.onnx"))
    graph = onnx.load(str(other / "model.onnx"))
    graph.doc_string = "another model's graph"
    onnx.save(graph, str(other / "model.onnx"))
    engines.onnx_engine(ModelDir.open(other))
    left = set((tmp_path / "cache").glob("ort-*.onnx"))
    assert len(left) == 2 and damaged not in left and set(kept.values()) - {damaged} <= left
    monkeypatch.setattr(engines, "BUILD_CACHE", tmp_path / "file")
    (tmp_path / "file").write_text("a file where the cache folder should be")
    assert np.array_equal(engines.onnx_engine(predictor.model, whole=True)(tokens), reference)
    assert np.allclose(engines.onnx_engine(predictor.model)(tokens), reference, rtol=1e-5, atol=0)


def test_a_batch_split_into_its_parts_holds_every_instruction_and_edge(monkeypatch):
    """`batching.parts`: each distinct instruction once (row 0 padding), every instruction's row
    found again through `ins`, the edge matrix `Dep.edges` builds from the same tokens; when two
    rows share a hash, or are wider than the hash's multipliers, they are told apart by their
    tokens. The bundled network from those parts answers as from the tokens."""
    import torch

    from surrogate_ops.blocks import batching
    from surrogate_ops.blocks.generate import generate

    predictor = Predictor(BUNDLED)
    network = predictor.model.module().eval()
    texts = generate(300, seed=23, density="dense")
    tokens = pad([predictor.encode(text, i)[0] for i, text in enumerate([*texts, *texts[:50]])])  # repeats too
    edges_made, is_edge = network.block.edges(torch.from_numpy(tokens))
    plain = np.where(is_edge.numpy(), 0, tokens)

    def check(rows, ins, edges):
        assert not rows[0].any() and len(np.unique(rows, axis=0)) == len(rows)
        assert np.array_equal(rows[ins], plain[:, :, : rows.shape[1]]) and not plain[:, :, rows.shape[1]:].any()
        assert np.array_equal(ins == 0, tokens[:, :, 0] == 0)
        assert np.array_equal(edges, edges_made.numpy())

    split = batching.parts(tokens, predictor.model.max_instructions)
    check(*split)
    assert len(split[0]) < (tokens[:, :, 0] != 0).sum() * 0.8  # instructions repeat, within and across blocks
    with torch.no_grad():
        assert np.allclose(network.forward_parts(*map(torch.from_numpy, split)).numpy(),
                           network(torch.from_numpy(tokens)).numpy(), rtol=1e-5, atol=0)
    monkeypatch.setattr(batching, "_HASH", np.zeros_like(batching._HASH))  # every row one key
    check(*batching.parts(tokens, predictor.model.max_instructions))
    monkeypatch.setattr(batching, "_HASH", batching._HASH[:2])  # rows wider than the multipliers
    check(*batching.parts(tokens, predictor.model.max_instructions))
