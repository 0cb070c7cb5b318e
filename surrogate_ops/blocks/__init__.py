"""Basic blocks in: from assembly text, from hex machine code (BHive), from ELF binaries, from a user's file.

Every source ends in the same canonical form: AT&T assembly, one instruction a line, as
`normalize_block` writes it and llvm-mca reads it. `asm` checks and normalizes text, `hexcode`
disassembles machine code with llvm-mc, `elf` cuts binaries into basic blocks, `inputs` reads the
files users hand to `predict`. A block becomes a network's input here too: `tokenizer` (canonical
tokens, the vocabulary), `deps` (def-use edges), `batching` (padding, buckets, a batch's parts) and
`compiled` (all of it in C++). Imports only the shared top modules (`config`, `errors`, `presets`,
`llvm_tools`, `forking`).
"""

from surrogate_ops.blocks.asm import BlockError, normalize_block, read_asm_file, split_asm_text
from surrogate_ops.blocks.inputs import SAMPLE_BLOCKS, read_blocks

__all__ = ["SAMPLE_BLOCKS", "BlockError", "normalize_block", "read_asm_file", "read_blocks", "split_asm_text"]
