"""The compiled front end: blocks to the model's input arrays without Python per instruction.

`native/frontend.cpp` is a port of the Python front end (`asm`'s checks and canonical form,
`tokenizer`'s tokens, `deps`' def-use edges, `hexcode`'s in-process disassembly) for the common
case; the Python code stays the reference and takes every block the compiled side leaves to it
(a line the checks refuse, a bare prefix line, a token outside the vocabulary, an empty or
over-long block), so an answer never depends on which side read the block. A test holds the two
to identical arrays on every BHive block and on blocks of real libraries.

It is compiled with g++ on first use (a few seconds; `surrogate-ops build-native` does it ahead of
time) into the per-user build cache, once per source, and called through ctypes, which releases
the GIL: a call's blocks are shared by threads inside the library. Where no C++ compiler is
present, or `SURROGATE_OPS_FRONTEND=python`, everything runs in Python as before.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from surrogate_ops.blocks.batching import Flat
from surrogate_ops.config import settings
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.native import cached, compile_once

SOURCE = Path(__file__).with_name("native") / "frontend.cpp"
_INT64 = np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS")
_UINT8 = np.ctypeslib.ndpointer(np.uint8, flags="C_CONTIGUOUS")
_building = threading.Lock()
THREADED_MIN = 1024  # blocks in a call from which its `threads` share it (a thread's start costs ~50 us)


def build(force: bool = False) -> Path:
    """The shared library of `SOURCE`, compiled where missing (or with `force`)."""
    return compile_once(SOURCE, cached(SOURCE, "frontend", ".so"), ("g++", "c++"),
                        ["-std=c++17", "-O2", "-DNDEBUG", "-shared", "-fPIC", "-pthread", "-ldl"], force)


def library() -> ctypes.CDLL | None:
    """The loaded front end, built on first use; None where it is turned off
    (`SURROGATE_OPS_FRONTEND=python`) or cannot be built: then the Python front end reads alone."""
    return None if settings().frontend == "python" else _loaded()


@functools.cache
def _loaded() -> ctypes.CDLL | None:
    try:
        with _building:
            path = build()
        lib = ctypes.CDLL(str(path))
    except (SurrogateOpsError, OSError):
        return None
    lib.fe_new.restype = ctypes.c_void_p
    lib.fe_new.argtypes = [ctypes.c_char_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.fe_free.argtypes = [ctypes.c_void_p]
    lib.fe_encode.restype = ctypes.c_void_p
    lib.fe_encode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, _INT64, ctypes.c_int64, ctypes.c_int]
    lib.fe_sizes.argtypes = [ctypes.c_void_p, _INT64]
    lib.fe_take.argtypes = [ctypes.c_void_p, _INT64, _INT64, _INT64, _UINT8]
    lib.fe_open_llvm.argtypes = [ctypes.c_char_p]
    lib.fe_disassemble.restype = ctypes.c_void_p
    lib.fe_disassemble.argtypes = [ctypes.c_char_p, _INT64, ctypes.c_int64, ctypes.c_int]
    lib.fe_text_size.restype = ctypes.c_int64
    lib.fe_text_size.argtypes = [ctypes.c_void_p]
    lib.fe_text_take.argtypes = [ctypes.c_void_p, ctypes.c_char_p, _INT64, _UINT8]
    return lib


def _threads(threads: int, count: int) -> int:
    return threads if count >= THREADED_MIN else 1


def _packed(texts: Sequence[str]) -> tuple[bytes, np.ndarray]:
    """The texts as one UTF-8 buffer, and where each starts (len + 1 offsets, in bytes)."""
    joined = "".join(texts)
    if joined.isascii():
        data = joined.encode("ascii")
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    else:
        encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
        data = b"".join(encoded)
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return data, offsets


class Encoder:
    """A tokenizer's vocabulary and limits on the compiled side: blocks of AT&T text to a `Flat`
    of the blocks it encoded, and which it left to Python."""

    def __init__(self, lib: ctypes.CDLL, tokenizer, max_instructions: int):
        tokens = sorted(tokenizer.vocab, key=tokenizer.vocab.__getitem__)
        if [tokenizer.vocab[t] for t in tokens] != list(range(len(tokens))) or any("\n" in t for t in tokens):
            raise SurrogateOpsError("the compiled front end needs a vocabulary of ids 0..n-1")
        vocab = "\n".join(tokens).encode("utf-8", "surrogatepass")
        self._lib = lib
        self._handle = lib.fe_new(vocab, len(vocab), tokenizer.max_tokens - tokenizer.max_deps, tokenizer.max_deps,
                                  tokenizer.positions, max_instructions)

    @classmethod
    def of(cls, tokenizer, max_instructions: int) -> Encoder | None:
        lib = library()
        return None if lib is None else cls(lib, tokenizer, max_instructions)

    def encode(self, blocks: Sequence[str], threads: int = 1) -> tuple[Flat, np.ndarray]:
        """(the encoded blocks, in order, as a Flat; per input block, True where Python must read it),
        on `threads` threads for a call of `THREADED_MIN` blocks or more."""
        data, offsets = _packed(blocks)
        result = self._lib.fe_encode(self._handle, data, offsets, len(blocks), _threads(threads, len(blocks)))
        sizes = np.zeros(3, dtype=np.int64)
        self._lib.fe_sizes(result, sizes)
        tokens, per_instruction, per_block = (np.empty(int(n), dtype=np.int64) for n in sizes)
        status = np.empty(len(blocks), dtype=np.uint8)
        self._lib.fe_take(result, tokens, per_instruction, per_block, status)
        return Flat(tokens, per_instruction, per_block), status.astype(bool)

    def __del__(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._lib.fe_free(handle)


_DISASSEMBLY_ERRORS = {1: "truncated instruction at the end of the block", 2: "invalid instruction encoding"}


@functools.cache
def _llvm_opened(library_path: str) -> bool:
    lib = library()
    return lib is not None and lib.fe_open_llvm(library_path.encode()) == 0


def disassemble(hexes: Sequence[str], llvm_library: str, threads: int = 1) -> tuple[list[str | None], dict[int, str], list[int]]:
    """Checked hex blocks (even-length hex) disassembled into canonical text by the libLLVM at
    `llvm_library`, on `threads` threads for a call of `THREADED_MIN` blocks or more: (text per
    block, None where there is none; the reasons by index; the blocks left to Python). SurrogateOpsError where that library cannot be opened."""
    lib = library()
    if lib is None or not _llvm_opened(llvm_library):
        raise SurrogateOpsError(f"the compiled front end cannot disassemble with {llvm_library}")
    data, offsets = _packed(hexes)
    result = lib.fe_disassemble(data, offsets, len(hexes), _threads(threads, len(hexes)))
    text = ctypes.create_string_buffer(max(int(lib.fe_text_size(result)), 1))
    starts = np.empty(len(hexes) + 1, dtype=np.int64)
    status = np.empty(len(hexes), dtype=np.uint8)
    lib.fe_text_take(result, text, starts, status)
    joined = text.raw[:int(starts[-1])].decode("ascii")
    bounds = starts.tolist()
    blocks: list[str | None] = [joined[a:b] for a, b in zip(bounds, bounds[1:])]
    errors: dict[int, str] = {}
    deferred: list[int] = []
    for i in np.flatnonzero(status).tolist():
        blocks[i] = None
        if status[i] == 3:
            deferred.append(i)
        else:
            errors[i] = _DISASSEMBLY_ERRORS[int(status[i])]
    return blocks, errors, deferred
