"""LLVM's C disassembler, in process: the same instruction printer as llvm-mc, without the pipe.

`hexcode` feeds llvm-mc thousands of blocks at a time and parses its output; at BHive sizes the
parsing, not LLVM, is most of the time. libLLVM exports a C API (`LLVMCreateDisasm`,
`LLVMDisasmInstruction`) that decodes one instruction from a byte buffer and prints it as llvm-mc
would, so each instruction's text and length come back directly: measured on 20,000 BHive
blocks, about 2.5x the llvm-mc path's blocks/s, with identical canonical text (tested on every
BHive block). The library is the one the llvm-mc in use links (read from `ldd`), so both paths
speak the same LLVM version; where it cannot be loaded (a static build, another platform),
`load` returns None and `hexcode` keeps the llvm-mc path.
"""

from __future__ import annotations

import ctypes
import functools
import re
import subprocess
import threading

MAX_INSTRUCTION = 15  # bytes: the longest x86 instruction
_TEXT = 256


class Disassembler:
    """x86-64 AT&T disassembly, one context per thread (an LLVM disassembler context is not shared)."""

    def __init__(self, library: ctypes.CDLL):
        self._lib = library
        self._local = threading.local()

    def _context(self):
        state = getattr(self._local, "state", None)
        if state is None:
            context = self._lib.LLVMCreateDisasm(b"x86_64-unknown-linux-gnu", None, 0, None, None)
            if not context:
                raise OSError("LLVMCreateDisasm refused the x86_64 triple")
            state = self._local.state = (context, ctypes.create_string_buffer(_TEXT))
        return state

    def instructions(self, code: bytes) -> list[str] | str:
        """The printed instructions of `code` (llvm-mc's text, tabs and all), or why it cannot be
        decoded: a truncated last instruction, or invalid bytes."""
        context, text = self._context()
        buffer = ctypes.create_string_buffer(code, len(code) + MAX_INSTRUCTION)  # zero padding past the end
        base, out, position = ctypes.addressof(buffer), [], 0
        while position < len(code):
            size = self._lib.LLVMDisasmInstruction(context, base + position, len(code) - position, 0, text, _TEXT)
            if size == 0:
                # decodable with more bytes than the block holds: the block cut an instruction short
                padded = self._lib.LLVMDisasmInstruction(context, base + position, len(code) - position
                                                         + MAX_INSTRUCTION, 0, text, _TEXT)
                return ("truncated instruction at the end of the block" if padded > len(code) - position
                        else "invalid instruction encoding")
            out.append(text.value.decode())
            position += size
        return out


@functools.cache
def library_path(llvm_mc: str) -> str | None:
    """The libLLVM that `llvm_mc` links (from `ldd`), or None where it links none (a static build)."""
    try:
        linked = subprocess.run(["ldd", llvm_mc], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"(libLLVM[^\s]*\.so[^\s]*) => (\S+)", linked)
    return None if found is None else found.group(2)


@functools.cache
def load(llvm_mc: str) -> Disassembler | None:
    """The disassembler of the libLLVM that `llvm_mc` links, or None where there is none to load."""
    path = library_path(llvm_mc)
    if path is None:
        return None
    try:
        library = ctypes.CDLL(path)
        for name in ("LLVMInitializeX86TargetInfo", "LLVMInitializeX86TargetMC", "LLVMInitializeX86Disassembler"):
            getattr(library, name)()
        library.LLVMCreateDisasm.restype = ctypes.c_void_p
        library.LLVMCreateDisasm.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                             ctypes.c_void_p]
        library.LLVMDisasmInstruction.restype = ctypes.c_size_t
        library.LLVMDisasmInstruction.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64,
                                                  ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t]
        disassembler = Disassembler(library)
        disassembler._context()
    except (OSError, AttributeError):
        return None
    return disassembler
