"""Every instruction form of LLVM's X86 target that llvm-mca accepts, per CPU: the data of
`presets/llvm_forms.json`, which the block generator's "forms" density draws from.

`native/x86_forms.cpp` (built as the parametric driver is, `parametric.compile_native`) walks every
opcode of LLVM's MCInstrInfo, gives it operands from its MCOperandInfo and prints it with the
target's AT&T MCInstPrinter twice, under two choices of operands. `template` turns the two texts
into a form: what differs between them is a slot of the generator ({r}, {w}, {l}, {x}, {zmm}, {k},
{m}, {b}, ...; see `blocks/generate.py`), named by the register or operand printed there; what
stays is the instruction's own text (`shlq %cl, {r}`, `rep stosq %rax, %es:(%rdi)`). Forms that
cannot sit in a block's body are dropped with the reason (`drop_reason`; the counts go into the
preset), opcodes that print alike become one form (`_REV` encodings, the VEX and EVEX encodings of
`vpaddd {x}, {x}, {x}`, ...), and every form is filled three times (`generate.fill`) and run through
llvm-mca for each CPU: a CPU lists the forms whose fillings llvm-mca all accepts and whose encoding's
ISA the CPU has.

That last condition is ours: LLVM 14's X86 assembler checks no ISA extension, so llvm-mca takes
AVX-512 text with -mcpu=haswell or ivybridge and schedules it as the nearest AVX instruction. The
MC layer knows an instruction's encoding and a CPU's features but not which extension an instruction
needs, so the check is by encoding and operands: EVEX needs avx512f (avx512fp16 in EVEX maps 5 and
6), VEX avx (avx512f with a mask register operand: kmovw), XOP xop, 3DNow! 3dnow. Finer extensions
(AVX2, FMA, FMA4, BMI on ivybridge; SSE4a on Intel CPUs; AVX-512 subsets beyond skylake-avx512's)
are invisible to it and are listed wherever llvm-mca accepts them; the preset's `_made` counts
what the check took out.

Regenerate the preset with `python -m surrogate_ops.programs.x86_forms` (`regenerate()`): about
20 s, most of it llvm-mca. To add a CPU, pass `cpus`; to fill a new kind of operand, teach
`_slot` and `generate._Block` the same placeholder.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from surrogate_ops import presets
from surrogate_ops.blocks import generate
from surrogate_ops.blocks.asm import BlockError, canonical_operands, normalize_block
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.llvm_tools import find_tool, run_tool, tool_version
from surrogate_ops.programs import parametric
from surrogate_ops.programs.llvm_mca import LlvmMca

SOURCE = Path(__file__).with_name("native") / "x86_forms.cpp"
PRESET = Path(presets.__file__).with_name("llvm_forms.json")
OPTIONAL_CPUS = ("skylake-avx512",)  # listed in the preset, not served: the generator may ask for them
# what an encoding needs of a CPU (EVEX maps 5 and 6 hold AVX512-FP16's instructions and no others)
ISA = {"evex": "+avx512f", "evex-map5": "+avx512fp16", "vex": "+avx", "xop": "+xop", "3dnow": "+3dnow"}
FILLINGS = (("forms", 0), ("dense", 1), ("sparse", 2))  # (density, seed): each form is checked filled these ways

_CONTROL = re.compile(r"syscall|sysenter|sysexit[lq]?|sysret[lq]?|iret[wlq]?|int[13o]?|ud[012][wlq]?|xbegin|xend|xabort"
                      r"|uiret|loop(?:n?e)?|j[er]?cxz")
_SYSTEM = re.compile(
    r"cli|sti|clts|hlt|invd|wbn?o?invd|invlpg[ab]?|invpcid|invept|invvpid|tlbsync|[ls](?:gdt|idt|ldt|msw|tr)[wlq]?"
    r"|rdmsr|wrmsr|rdpmc|swapgs|vmcall|vmlaunch|vmresume|vmxon|vmxoff|vmread[lq]?|vmwrite[lq]?|vmptrld|vmptrst|vmclear"
    r"|vmfunc|vmrun[lq]?|vmload[lq]?|vmsave[lq]?|vmmcall|vmgexit|stgi|clgi|skinit|encl[suv]|getsec|rsm|pconfig|xsetbv"
    r"|xsaves(?:64)?|xrstors(?:64)?|monitorx?|mwaitx?|(?:in|out)s?[bwl]?|lar[wlq]|lsl[wlq]|verr|verw|arpl"
    r"|l[defgs]s[wlq]|clac|stac|rdssp[dq]|incssp[dq]|saveprevssp|rstorssp|wru?ss[dq]|setssbsy|clrssbsy|rmpadjust"
    r"|rmpupdate|pvalidate|psmash|seamcall|seamops|seamret|tdcall|senduipi|testui|clui|stui|enqcmds|hreset|loadiwkey")
_PREFIX_ALONE = frozenset({"cs", "ds", "es", "fs", "gs", "ss", "data16", "data32", "addr16", "addr32", "rex64", "lock",
                           "rep", "repne", "notrack", "xacquire", "xrelease"})
_SEGMENT_REGISTER = re.compile(r"%[c-gs]s(?!:)")
_CONTROL_FLAGS = frozenset({"branch", "call", "return", "barrier", "terminator", "indirect", "trap"})
_NO_SLOT_CLASSES = {"TILE": "AMX tile registers (no CPU served has AMX; the generator has no slot for them)",
                    "CONTROL_REG": "a control register: privileged", "DEBUG_REG": "a debug register: privileged",
                    "SEGMENT_REG": "a segment register operand: system state"}
_PAIR_CLASS = re.compile(r"VK\d+PAIR")
_MASK_CLASS = re.compile(r"VK\d+(?:WM)?")

_SLOTS = frozenset({"r", "e", "w", "l", "x", "y", "zmm", "k", "%k", "mm", "st", "m", "b", "i", "rc"})
_TOKEN = re.compile(r"\{[^}]*\}|(?:%[c-gs]s:)?-?\w*\([^)]*\)|\$-?\w+|%\w+(?:\(\d\))?|[^{]+")
_REGISTER_SLOTS = (
    (re.compile(r"%(?:r[a-d]x|r[sd]i|r[sb]p|r\d+)"), "{r}"),
    (re.compile(r"%(?:e[a-d]x|e[sd]i|e[sb]p|r\d+d)"), "{e}"),
    (re.compile(r"%(?:[a-d]x|[sd]i|[sb]p|r\d+w)"), "{w}"),
    (re.compile(r"%(?:[a-d]l|[sd]il|[sb]pl|r\d+b)"), "{l}"),
    (re.compile(r"%xmm\d+"), "{x}"), (re.compile(r"%ymm\d+"), "{y}"), (re.compile(r"%zmm\d+"), "{zmm}"),
    (re.compile(r"%k[0-7]"), "{k}"), (re.compile(r"%mm[0-7]"), "{mm}"), (re.compile(r"%st\(\d\)"), "{st}"),
)


@dataclass(frozen=True)
class Printed:
    """One opcode (or one condition code or prefix of it) as the native tool printed it."""

    opcode: str
    flags: frozenset[str]
    widths: tuple[int, ...]  # bytes of each immediate operand, in operand order
    classes: tuple[str, ...]  # register classes of its register operands
    scheduled: frozenset[str]  # CPUs whose scheduling model resolves it to a valid class
    a: str
    b: str

    @property
    def encoding(self) -> str:
        return next(f[4:] for f in self.flags if f.startswith("enc="))


@dataclass
class Summary:
    """What `regenerate` found: counts for the preset's notes and for the report."""

    llvm: str
    opcodes: int = 0  # opcodes LLVM's X86 target lists
    printed: int = 0  # variants printed (a condition code or a rep prefix makes more than one per opcode)
    forms: int = 0  # distinct forms left to check
    per_cpu: dict[str, int] = field(default_factory=dict)  # forms listed per CPU
    excluded: dict[str, int] = field(default_factory=dict)  # the CPU's model schedules them, the CPU lacks the ISA
    dropped: dict[str, int] = field(default_factory=dict)  # printed variants, by why they were dropped
    forms_dropped: dict[str, int] = field(default_factory=dict)  # forms no CPU lists, by why
    seconds: float = 0.0


def listing(llvm_mca: str, cpus: Sequence[str]) -> tuple[dict[str, frozenset[str]], list[Printed]]:
    """(each CPU's ISA features of interest, every opcode as the native tool prints it)."""
    binary = parametric.compile_native(SOURCE, "x86-forms", llvm_mca)
    proc = run_tool([str(binary), *cpus], timeout=120)
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or not lines or not lines[0].startswith("CPUS"):
        raise SurrogateOpsError(f"x86-forms failed (exit status {proc.returncode}): {proc.stderr.strip()[-300:]}")
    features = {}
    for item in lines[0].split("\t")[1:]:
        cpu, _, names = item.partition(":")
        features[cpu] = frozenset(names.split(",")) - {""}
    rows = []
    for line in lines[1:]:
        opcode, flags, widths, classes, scheduled, a, b = line.split("\t")
        rows.append(Printed(opcode, frozenset(flags.split(",")), tuple(int(w) for w in widths.split(",") if w != "-"),
                            tuple(c for c in classes.split(",") if c != "-"),
                            frozenset(scheduled.split(",")) - {"-"}, a, b))
    return features, rows


def drop_reason(row: Printed) -> str | None:
    """Why a printed opcode is no form of a block's body, or None when it is one."""
    if "pseudo" in row.flags:
        return "pseudo instruction (no encoding)"
    if "unfilled" in row.flags:
        return "an operand kind the native tool does not fill"
    if row.flags & _CONTROL_FLAGS:
        return "control flow (branch, call, return, trap): a block's body cannot hold it"
    for name in row.classes:
        if name in _NO_SLOT_CLASSES:
            return _NO_SLOT_CLASSES[name]
        if _PAIR_CLASS.fullmatch(name):
            return "a mask register pair (vp2intersect; no CPU served has it)"
    if "vsib" in row.flags:
        return "gather or scatter: the generator cannot keep mask, index and destination registers apart"
    words = row.a.replace("rep;", "rep ").split()
    mnemonic = next((w for w in words if w not in ("lock", "rep")), words[0] if words else "")
    if mnemonic in _PREFIX_ALONE:
        return "a prefix on its own"
    if _CONTROL.fullmatch(mnemonic):
        return "control flow (system call, interrupt, loop, transaction): a block's body cannot hold it"
    if _SYSTEM.fullmatch(mnemonic):
        return "privileged or system instruction (descriptor tables, MSRs, I/O ports, virtualization, enclaves, ...)"
    if _SEGMENT_REGISTER.search(row.a):
        return "a segment register operand: system state"
    return None


def template(row: Printed) -> str:
    """The form of a printed opcode: the slots where its two printings differ; ValueError when the
    two do not line up or a varying operand has no slot."""
    try:
        a, b = (normalize_block(text.replace("rep;", "rep ")) for text in (row.a, row.b))
    except BlockError as exc:
        raise ValueError(f"refused by the block gate: {exc.reason}") from None
    (head, ops_a), (_, ops_b) = _split(a), _split(b)  # the heads may differ: `vcmpunordps` / `vcmpnltps`
    operands_a, operands_b = (canonical_operands(ops) if ops else [] for ops in (ops_a, ops_b))
    if len(operands_a) != len(operands_b):
        raise ValueError("the two printings do not line up: different operand counts")
    out = []
    for one, two in zip(operands_a, operands_b):
        tokens_a, tokens_b = _TOKEN.findall(one), _TOKEN.findall(two)
        if "".join(tokens_a) != one or len(tokens_a) != len(tokens_b):
            raise ValueError(f"the two printings do not line up: {one!r} and {two!r}")
        out.append("".join(t if t == u else _slot(t, row) for t, u in zip(tokens_a, tokens_b)))
    for literal in re.findall(r"\{([^}]*)\}", head + " ".join(out)):
        if literal not in _SLOTS and not generate.DECORATIONS.fullmatch(literal):
            raise ValueError(f"text in braces the generator does not keep: {{{literal}}}")
    return head + (" " + ", ".join(out) if out else "")


def _split(text: str) -> tuple[str, str]:
    """(prefixes and mnemonic, operands) of a canonical instruction."""
    words = text.split(" ")
    k = 0
    while k < len(words) - 1 and words[k] in ("lock", "rep", "repne", "{vex}"):
        k += 1
    return " ".join(words[:k + 1]), " ".join(words[k + 1:])


def _slot(token: str, row: Printed) -> str:
    """The generator's placeholder for an operand token that varies."""
    if re.fullmatch(r"\{%k[1-7]\}", token):
        return "{%k}"
    if re.fullmatch(r"\{r[nduz]-sae\}", token):
        return "{rc}"
    if token.endswith(")") and "(" in token and not token.startswith("%st"):
        return "{m}"
    if token.startswith("$"):
        index = int(token[1:]) - 1  # the native tool prints immediate j as 1 + j
        if not 0 <= index < len(row.widths):
            raise ValueError(f"an immediate that is none of the operands: {token}")
        return "${b}" if row.widths[index] == 1 else "${i}"
    for pattern, slot in _REGISTER_SLOTS:
        if pattern.fullmatch(token):
            return slot
    raise ValueError(f"an operand with no slot: {token!r}")


def _needs(row: Printed) -> set[str]:
    """The CPU features a printed opcode needs, as far as the MC layer tells: its encoding's ISA,
    and avx512f for an operand in a mask register (the VEX-encoded kmovw, kandw ...)."""
    needs = {ISA[row.encoding]} if row.encoding in ISA else set()
    return needs | {"+avx512f"} if any(_MASK_CLASS.fullmatch(c) for c in row.classes) else needs


def accepted(forms: Sequence[str], mcpu: str, llvm_mca: str | None = None) -> set[str]:
    """The forms llvm-mca accepts for `mcpu` in every filling of `FILLINGS`: one run a CPU, many
    blocks a call (`LlvmMca` bisects what it refuses)."""
    blocks = [block for density, seed in FILLINGS for block in generate.fill(list(forms), seed, density)]
    results = LlvmMca(mcpu, iterations=1, path=llvm_mca, chunk_size=1000).run(blocks)
    ok = [r.ok for r in results]
    n = len(forms)
    return {form for k, form in enumerate(forms) if all(ok[k + j * n] for j in range(len(FILLINGS)))}


def regenerate(path: Path = PRESET, cpus: Sequence[str] | None = None, llvm_mca: str | None = None) -> Summary:
    """Enumerate LLVM's X86 forms, check them with llvm-mca for `cpus` (default: every CPU of
    `presets/microarchitectures.json`, and skylake-avx512) and write the preset to `path`."""
    start = time.monotonic()
    llvm_mca = find_tool("llvm-mca", llvm_mca)
    cpus = list(cpus or [*presets.load("microarchitectures"), *OPTIONAL_CPUS])
    features, rows = listing(llvm_mca, cpus)
    summary = Summary(llvm=tool_version(llvm_mca, timeout=30), opcodes=len({r.opcode for r in rows}), printed=len(rows))
    dropped: Counter[str] = Counter()
    forms: dict[str, list[Printed]] = {}
    for row in rows:
        why = drop_reason(row)
        if why is None:
            try:
                forms.setdefault(template(row), []).append(row)
            except ValueError as exc:  # counted by kind: the message's words before its first colon
                why = f"no form: {str(exc).split(':')[0]}"
        if why:
            dropped[why] += 1
    summary.forms = len(forms)
    listed: dict[str, set[str]] = {form: set() for form in forms}
    tried: set[str] = set()  # forms llvm-mca was asked about for some CPU
    excluded: Counter[str] = Counter()
    for cpu in cpus:
        candidates = []
        for form, printed in forms.items():  # opcodes that print alike: the assembler takes the shortest encoding
            scheduled = [p for p in printed if cpu in p.scheduled]
            if any(_needs(p) <= features[cpu] for p in scheduled):
                candidates.append(form)
            elif scheduled:  # llvm-mca would take it (its model schedules it), the CPU has no such ISA
                excluded[cpu] += 1
        tried.update(candidates)
        for form in accepted(candidates, cpu, llvm_mca):
            listed[form].add(cpu)
    unlisted = Counter("llvm-mca refuses it (not in 64-bit mode, operands it does not take, ...)" if form in tried
                       else "no CPU has its ISA, or no CPU's scheduling model has it (AVX512-FP16, XOP, 3DNow!, ...)"
                       for form, where in listed.items() if not where)
    summary.forms_dropped = dict(unlisted.most_common())
    summary.per_cpu = {cpu: sum(cpu in where for where in listed.values()) for cpu in cpus}
    summary.excluded = {cpu: excluded[cpu] for cpu in cpus}
    summary.dropped = dict(dropped.most_common())
    summary.seconds = round(time.monotonic() - start, 1)
    _write(path, cpus, listed, summary)
    return summary


def _write(path: Path, cpus: list[str], listed: dict[str, set[str]], summary: Summary) -> None:
    groups: dict[tuple[str, ...], list[str]] = {}
    for form, where in listed.items():
        if where:
            groups.setdefault(tuple(c for c in cpus if c in where), []).append(form)
    table = {
        "_doc": ("Instruction forms of LLVM's X86 target that llvm-mca accepts, per CPU: the generator's 'forms' "
                 "density draws from them (blocks/generate.py fills the slots: {r} {e} {w} {l} 64/32/16/8-bit general "
                 "registers, {x} {y} {zmm} vector registers, {k} a mask register, {%k} a write mask, {mm} MMX, {st} "
                 "x87, {m} memory, {b} a byte immediate, {i} a wider one, {rc} a rounding mode; {z} {sae} {1toN} "
                 "{vex} are kept as they are). Made by programs/x86_forms.py (python -m "
                 f"surrogate_ops.programs.x86_forms) from LLVM {summary.llvm}'s MCInstrInfo and AT&T MCInstPrinter, "
                 f"each form filled three ways and checked with llvm-mca {summary.llvm}; a CPU lists a form when "
                 "llvm-mca accepts it and the CPU has the ISA its encoding needs (EVEX: avx512f, in maps 5 and 6 "
                 "avx512fp16; VEX: avx, or avx512f with a mask register operand; XOP: xop). Each group: the CPUs, "
                 "then the forms listed for exactly them."),
        "_made": {"llvm": summary.llvm, "opcodes": summary.opcodes, "printed": summary.printed,
                  "forms_checked": summary.forms, "per_cpu": summary.per_cpu,
                  "scheduled_by_llvm_mca_but_isa_missing": summary.excluded, "printed_dropped": summary.dropped,
                  "forms_dropped": summary.forms_dropped, "seconds": summary.seconds},
        "groups": [{"cpus": list(group), "forms": sorted(members)}
                   for group, members in sorted(groups.items(), key=lambda item: -len(item[1]))],
    }
    path.write_text(json.dumps(table, indent=0) + "\n")  # one form a line: readable, and small diffs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m surrogate_ops.programs.x86_forms",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=PRESET)
    parser.add_argument("--cpus", nargs="+", help="llvm-mca -mcpu names (default: the served CPUs and skylake-avx512)")
    args = parser.parse_args(argv)
    summary = regenerate(args.out, args.cpus)
    print(json.dumps(summary.__dict__, indent=1))


if __name__ == "__main__":
    main()
