"""System and I/O instructions that real libraries hold (often bytes of data read as code), in
6,000 blocks beside ordinary instructions: part of the bundles' training mix (benchmarks/bundles.sh).

    python benchmarks/system_blocks.py system.s
"""
import random
import sys

from surrogate_ops.blocks.generate import generate

SYSTEM = ["outb %al, %dx", "outw %ax, %dx", "outl %eax, %dx", "inb %dx, %al", "inw %dx, %ax", "inl %dx, %eax",
          "outb %al, $16", "inl $96, %eax", "lretl", "lretq", "iretq", "iretl", "cli", "sti", "outsb (%rsi), %dx",
          "outsl (%rsi), %dx", "insb %dx, %es:(%rdi)", "insl %dx, %es:(%rdi)", "cld", "std", "lahf", "sahf",
          "pushfq", "popfq", "cpuid", "rdtsc", "rdtscp", "xgetbv", "pause", "lfence", "mfence", "sfence",
          "clflush (%rax)", "prefetcht0 (%rax)", "prefetchnta 64(%rdi)", "fwait", "hlt", "int3", "wbinvd",
          "fnstsw %ax", "fldcw (%rsp)", "fnstcw (%rsp)", "fxsave (%rax)", "xsave (%rax)", "rdrand %rax",
          "rdseed %rax", "cmc", "clc", "stc", "xlatb", "sldt %ax", "str %ax", "verr %ax", "lsl %ax, %bx",
          "lar %ax, %bx", "swapgs", "rdpid %rax", "ud2", "int $128", "movw %ds, %ax", "movw %ax, %es",
          "pushq %fs", "popq %fs", "enter $16, $0", "leave", "wait", "stmxcsr (%rsp)", "ldmxcsr (%rsp)"]
rng = random.Random("system")
ordinary = [line for block in generate(3000, seed=14) for line in block.split("\n")]
blocks = []
for _ in range(6000):
    lines = [rng.choice(ordinary) for _ in range(rng.randint(0, 5))]
    for _ in range(rng.choice((1, 1, 2))):
        lines.insert(rng.randint(0, len(lines)), rng.choice(SYSTEM))
    blocks.append("\n".join(lines))
open(sys.argv[1] if len(sys.argv) > 1 else "system.s", "w").write("\n\n".join(blocks) + "\n")
