"""Basic blocks in: from assembly text, from hex machine code (BHive), from ELF binaries.

Every source ends in the same canonical form: AT&T assembly, one instruction a line, as
`normalize_block` writes it and llvm-mca reads it. `asm` checks and normalizes text, `hexcode`
disassembles machine code with llvm-mc, `elf` cuts binaries into basic blocks.
"""

from surrogate_ops.blocks.asm import BlockError, normalize_block, read_asm_file, split_asm_text

__all__ = ["BlockError", "normalize_block", "read_asm_file", "split_asm_text"]
