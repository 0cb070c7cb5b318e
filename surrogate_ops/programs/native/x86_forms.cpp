// x86-forms: every opcode of LLVM's X86 target, printed in AT&T syntax by the target's own
// MCInstPrinter, for programs/x86_forms.py to turn into the block generator's instruction forms.
//
// For each opcode the tool builds an MCInst from its MCOperandInfo and prints it twice, under two
// choices of operands (A and B: other registers of the operand's class, another address, other
// immediates); a printed operand that differs between the two is one the form lets vary, one that
// stays is part of the instruction (`%cl` of `shlq %cl, %rax`, `%es:(%rdi)` of `stosq`).
// Registers come from the operand's register class; a tied operand repeats its tie; an X86 memory
// operand (base, scale, index, displacement, segment) is `8(%rbx)` in A and `16(%rsi)` in B; the
// string instructions' implicit operands (`(%rsi)`, `%es:(%rdi)`) get the registers their address
// size fixes; an immediate j of an instruction is 1 + j in A and 2 + j in B (A's printed values name
// the operands; 1 and 2 are comparison predicates that every compare prints in its mnemonic,
// `vpcmpltb`, where 3 would be `vpcmpb $3`), a condition code is enumerated (one line per code: cmovew ... cmovgq),
// a rounding control is {rn-sae} in A and {rd-sae} in B. String instructions are printed once more
// with the rep prefix.
//
// Output: one line per printed variant, tab-separated:
//   <opcode name> <flags> <immediate widths> <register classes> <cpus> <text A> <text B>
// flags: comma-separated facts from MCInstrDesc and the X86 TSFlags (pseudo, branch, call, return,
// barrier, terminator, indirect, trap, sideeffects, load, store, vsib, rep, and the encoding:
// enc=legacy|vex|xop|evex|evex-map5 (EVEX maps 5 and 6: AVX512-FP16)|3dnow);
// immediate widths: bytes of each immediate operand in order (`-` when none); register classes:
// the classes of the register operands (`-` when none); cpus: those of the command line whose
// scheduling model resolves the opcode to a valid class (as llvm-mca's InstrBuilder does).
// The first line is `CPUS` and, per CPU of the command line, `<cpu>:<+feature,...>` for the ISA
// features of interest it has.
// Usage: x86-forms haswell skylake ...
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "llvm/ADT/Triple.h"
#include "llvm/MC/MCAsmInfo.h"
#include "llvm/MC/MCInst.h"
#include "llvm/MC/MCInstPrinter.h"
#include "llvm/MC/MCInstrDesc.h"
#include "llvm/MC/MCInstrInfo.h"
#include "llvm/MC/MCRegisterInfo.h"
#include "llvm/MC/MCSchedule.h"
#include "llvm/MC/MCSubtargetInfo.h"
#include "llvm/MC/MCTargetOptions.h"
#include "llvm/MC/TargetRegistry.h"
#include "llvm/Support/TargetSelect.h"
#include "llvm/Support/raw_ostream.h"

using namespace llvm;

// LLVM 14's X86II TSFlags layout (lib/Target/X86/MCTargetDesc/X86BaseInfo.h, not installed with the
// headers): checked against known opcodes at start-up, so a different layout stops the tool.
namespace x86 {
constexpr uint64_t FormMask = 127;
constexpr unsigned Pseudo = 0, RawFrmSrc = 4, RawFrmDst = 5, RawFrmDstSrc = 6,
                   RawFrmImm8 = 7, RawFrmImm16 = 8;
constexpr unsigned AdSizeShift = 9;        // OpSizeShift 7 + 2
constexpr unsigned OpMapShift = 13;        // OpPrefixShift 11 + 2; four bits (MAP5 and MAP6 of AVX512-FP16)
constexpr unsigned ImmShift = 18;          // REXShift (OpMapShift + 4) + 1
constexpr unsigned EncodingShift = 29;     // ImmShift + 4 (imm) + 3 (FP type) + 1 (LOCK) + 1 (REP) + 2 (domain)
constexpr unsigned ThreeDNowMap = 7, Map5 = 8, Map6 = 9;  // MAP5 and MAP6 hold AVX512-FP16 only
constexpr unsigned IP_HAS_REPEAT = 1U << 3;  // X86::IP_HAS_REPEAT, the MCInst flag the printer prints as `rep`
constexpr int64_t CondCodes = 16;
constexpr unsigned OperandRoundingControl = MCOI::OPERAND_FIRST_TARGET;  // X86::OPERAND_ROUNDING_CONTROL
constexpr unsigned OperandCondCode = MCOI::OPERAND_FIRST_TARGET + 1;     // X86::OPERAND_COND_CODE

unsigned form(uint64_t ts) { return ts & FormMask; }
unsigned adSize(uint64_t ts) { return (ts >> AdSizeShift) & 3; }  // 0 any, 1 16-bit, 2 32-bit, 3 64-bit
unsigned opMap(uint64_t ts) { return (ts >> OpMapShift) & 15; }
unsigned immKind(uint64_t ts) { return (ts >> ImmShift) & 15; }
unsigned encoding(uint64_t ts) { return (ts >> EncodingShift) & 3; }  // 0 legacy, 1 VEX, 2 XOP, 3 EVEX
unsigned immBytes(uint64_t ts) {
  switch (immKind(ts)) {
  case 1: case 2: case 3: return 1;  // Imm8, Imm8PCRel, Imm8Reg
  case 4: case 5: return 2;          // Imm16, Imm16PCRel
  case 6: case 7: case 8: return 4;  // Imm32, Imm32PCRel, Imm32S
  case 9: return 8;                  // Imm64
  default: return 0;
  }
}
}  // namespace x86

struct Tool {
  const MCInstrInfo &MII;
  const MCRegisterInfo &MRI;
  unsigned SegmentClass = ~0U;

  unsigned reg(const char *Name) const {
    for (unsigned R = 1; R < MRI.getNumRegs(); ++R)
      if (StringRef(MRI.getName(R)) == Name)
        return R;
    return 0;
  }

  // A register of class `RC` for choice A (0) or B (1): the first of the preferred names in the
  // class, else the class's second (A) or third (B) register, as far as it has them.
  unsigned pick(unsigned RC, int Choice) const {
    static const char *Preferred[2][12] = {
        {"RBX", "EBX", "BX", "BL", "XMM1", "YMM1", "ZMM1", "K1", "MM1", "ST1", "R10", nullptr},
        {"R9", "R9D", "R9W", "R9B", "XMM2", "YMM2", "ZMM2", "K2", "MM2", "ST2", "R11", nullptr}};
    const MCRegisterClass &Class = MRI.getRegClass(RC);
    for (const char **Name = Preferred[Choice]; *Name; ++Name) {
      unsigned R = reg(*Name);
      if (R && Class.contains(R))
        return R;
    }
    unsigned N = Class.getNumRegs();
    return N == 0 ? 0 : Class.getRegister(std::min<unsigned>(N - 1, 1 + Choice));
  }

  bool isMem(const MCOperandInfo &Op) const { return Op.OperandType == MCOI::OPERAND_MEMORY; }
  bool isImmLike(const MCOperandInfo &Op) const { return Op.RegClass < 0 && !Op.isLookupPtrRegClass(); }

  // Operands for choice A or B; `Cond` the condition code; false when an operand is of a kind the
  // tool does not fill (the opcode is then listed with an `unfilled` flag).
  bool build(unsigned Opcode, int Choice, int64_t Cond, MCInst &MI, std::vector<unsigned> &Widths,
             std::string &Classes, bool &Vsib) const {
    const MCInstrDesc &Desc = MII.get(Opcode);
    uint64_t TS = Desc.TSFlags;
    unsigned Ad = x86::adSize(TS);
    const char *Si = Ad == 2 ? "ESI" : Ad == 1 ? "SI" : "RSI", *Di = Ad == 2 ? "EDI" : Ad == 1 ? "DI" : "RDI";
    unsigned NumOps = Desc.getNumOperands(), Imm = 0;
    MI.setOpcode(Opcode);
    for (unsigned I = 0; I < NumOps; ++I) {
      const MCOperandInfo &Op = Desc.OpInfo[I];
      int Tied = Desc.getOperandConstraint(I, MCOI::TIED_TO);
      if (Tied >= 0 && unsigned(Tied) < I) {
        MI.addOperand(MI.getOperand(Tied));
        continue;
      }
      if (isMem(Op)) {
        bool Full = I + 4 < NumOps && isMem(Desc.OpInfo[I + 1]) && isImmLike(Desc.OpInfo[I + 1]) &&
                    isMem(Desc.OpInfo[I + 4]);
        if (Full) {  // base, scale, index, displacement, segment
          const MCOperandInfo &Index = Desc.OpInfo[I + 2];
          unsigned IndexReg = 0;
          if (!Index.isLookupPtrRegClass() && Index.RegClass >= 0) {  // a vector index: VSIB
            Vsib = true;
            IndexReg = pick(Index.RegClass, 1 - Choice);
          }
          unsigned Base = reg(Choice ? "RSI" : "RBX");
          if (!Desc.OpInfo[I].isLookupPtrRegClass() && Desc.OpInfo[I].RegClass >= 0)
            Base = pick(Desc.OpInfo[I].RegClass, Choice);
          MI.addOperand(MCOperand::createReg(Base));
          MI.addOperand(MCOperand::createImm(1));
          MI.addOperand(MCOperand::createReg(IndexReg));
          MI.addOperand(MCOperand::createImm(Choice ? 16 : 8));
          MI.addOperand(MCOperand::createReg(0));
          I += 4;
          continue;
        }
        if (isImmLike(Op)) {  // an absolute offset and its segment (movabsq 16, %rax)
          MI.addOperand(MCOperand::createImm(16));
          MI.addOperand(MCOperand::createReg(0));
          I += 1;
          continue;
        }
        if (I + 1 < NumOps && isMem(Desc.OpInfo[I + 1]) && unsigned(Desc.OpInfo[I + 1].RegClass) == SegmentClass) {
          MI.addOperand(MCOperand::createReg(reg(Si)));  // a source index and its segment: (%rsi)
          MI.addOperand(MCOperand::createReg(0));
          I += 1;
          continue;
        }
        MI.addOperand(MCOperand::createReg(reg(Di)));  // a destination index: %es:(%rdi)
        continue;
      }
      if (Op.RegClass >= 0 && !Op.isLookupPtrRegClass()) {
        unsigned R = pick(Op.RegClass, Choice);
        if (!R)
          return false;
        Classes += (Classes.empty() ? "" : ",") + std::string(MRI.getRegClassName(&MRI.getRegClass(Op.RegClass)));
        MI.addOperand(MCOperand::createReg(R));
        continue;
      }
      if (Op.OperandType == x86::OperandCondCode) {
        MI.addOperand(MCOperand::createImm(Cond));
        continue;
      }
      if (Op.OperandType == x86::OperandRoundingControl) {
        MI.addOperand(MCOperand::createImm(Choice));
        continue;
      }
      if (Op.OperandType == MCOI::OPERAND_IMMEDIATE || Op.OperandType == MCOI::OPERAND_PCREL ||
          Op.OperandType == MCOI::OPERAND_UNKNOWN) {
        unsigned Form = x86::form(TS), Bytes = x86::immBytes(TS);
        if (Imm > 0 && Form == x86::RawFrmImm8)
          Bytes = 1;
        else if (Imm > 0 && Form == x86::RawFrmImm16)
          Bytes = 2;
        Widths.push_back(Bytes);
        MI.addOperand(MCOperand::createImm(1 + Choice + Imm++));
        continue;
      }
      return false;
    }
    return true;
  }
};

static std::string print(MCInstPrinter &Printer, const MCSubtargetInfo &STI, const MCInst &MI) {
  std::string Text;
  raw_string_ostream OS(Text);
  Printer.printInst(&MI, 0, "", STI, OS);
  OS.flush();
  for (char &C : Text)
    if (C == '\t' || C == '\n')
      C = ' ';
  size_t Start = Text.find_first_not_of(' '), End = Text.find_last_not_of(' ');
  return Start == std::string::npos ? "" : Text.substr(Start, End - Start + 1);
}

// Whether `STI`'s scheduling model gives the instruction a valid class, resolving variants on the
// instruction itself: the check llvm-mca's InstrBuilder makes before it refuses an instruction.
static bool scheduled(const MCSubtargetInfo &STI, const MCInstrInfo &MII, const MCInst &MI) {
  const MCSchedModel &SM = STI.getSchedModel();
  if (!SM.hasInstrSchedModel())
    return false;
  unsigned Class = MII.get(MI.getOpcode()).getSchedClass();
  while (Class && SM.getSchedClassDesc(Class)->isVariant())
    Class = STI.resolveVariantSchedClass(Class, &MI, &MII, SM.getProcessorID());
  return Class && SM.getSchedClassDesc(Class)->isValid();
}

int main(int argc, char **argv) {
  LLVMInitializeX86TargetInfo();
  LLVMInitializeX86TargetMC();
  std::string Error, TripleName = "x86_64-unknown-linux-gnu";
  Triple TheTriple(TripleName);
  const Target *T = TargetRegistry::lookupTarget(TripleName, Error);
  if (!T) {
    errs() << "error " << Error << "\n";
    return 1;
  }
  std::unique_ptr<MCRegisterInfo> MRI(T->createMCRegInfo(TripleName));
  MCTargetOptions Options;
  std::unique_ptr<MCAsmInfo> MAI(T->createMCAsmInfo(*MRI, TripleName, Options));
  std::unique_ptr<MCInstrInfo> MII(T->createMCInstrInfo());
  std::unique_ptr<MCSubtargetInfo> Printing(T->createMCSubtargetInfo(TripleName, "x86-64", ""));
  std::unique_ptr<MCInstPrinter> Printer(T->createMCInstPrinter(TheTriple, 0, *MAI, *MII, *MRI));
  std::vector<std::string> Cpus(argv + 1, argv + argc);
  std::vector<std::unique_ptr<MCSubtargetInfo>> STIs;
  static const char *Features[] = {"avx", "avx2", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd",
                                   "avx512fp16", "fma", "bmi", "bmi2", "xop", "fma4", "sse4a", "3dnow", "tbm", nullptr};
  outs() << "CPUS";
  for (const std::string &Cpu : Cpus) {
    STIs.emplace_back(T->createMCSubtargetInfo(TripleName, Cpu, ""));
    if (!STIs.back()->isCPUStringValid(Cpu)) {
      errs() << "error unknown cpu " << Cpu << "\n";
      return 1;
    }
    outs() << "\t" << Cpu << ":";
    const char *Sep = "";
    for (const char **F = Features; *F; ++F)
      if (STIs.back()->checkFeatures(std::string("+") + *F)) {
        outs() << Sep << "+" << *F;
        Sep = ",";
      }
  }
  outs() << "\n";

  Tool Forms{*MII, *MRI};
  for (unsigned C = 0; C < MRI->getNumRegClasses(); ++C)
    if (StringRef(MRI->getRegClassName(&MRI->getRegClass(C))) == "SEGMENT_REG")
      Forms.SegmentClass = C;
  auto flags = [&](StringRef Name) {  // the TSFlags of an opcode named
    for (unsigned Op = 0; Op < MII->getNumOpcodes(); ++Op)
      if (MII->getName(Op) == Name)
        return MII->get(Op).TSFlags;
    return uint64_t(0);
  };
  // the TSFlags layout above, held to opcodes whose fields are known
  if (x86::immBytes(flags("ADD64ri8")) != 1 || x86::immBytes(flags("ADD64ri32")) != 4 ||
      x86::immBytes(flags("MOV64ri")) != 8 || x86::immBytes(flags("ADD16ri")) != 2 ||
      x86::encoding(flags("VADDPSZrr")) != 3 || x86::encoding(flags("VADDPSrr")) != 1 ||
      x86::opMap(flags("VADDPHZrr")) != x86::Map5 || x86::form(flags("STOSQ")) != x86::RawFrmDst ||
      x86::adSize(flags("STOSQ")) != 0 || x86::form(flags("MOVSQ")) != x86::RawFrmDstSrc || Forms.SegmentClass == ~0U) {
    errs() << "error this LLVM's X86 TSFlags layout is not LLVM 14's: update x86_forms.cpp\n";
    return 1;
  }

  for (unsigned Opcode = 0; Opcode < MII->getNumOpcodes(); ++Opcode) {
    const MCInstrDesc &Desc = MII->get(Opcode);
    uint64_t TS = Desc.TSFlags;
    std::string Flags;
    auto flag = [&](bool On, const char *Name) {
      if (On)
        Flags += (Flags.empty() ? "" : ",") + std::string(Name);
    };
    unsigned Enc = x86::encoding(TS);
    unsigned Map = x86::opMap(TS);
    flag(true, Enc == 1 ? "enc=vex" : Enc == 2 ? "enc=xop"
               : Enc == 3 ? (Map == x86::Map5 || Map == x86::Map6 ? "enc=evex-map5" : "enc=evex")
               : Map == x86::ThreeDNowMap ? "enc=3dnow" : "enc=legacy");
    bool Pseudo = Desc.isPseudo() || x86::form(TS) == x86::Pseudo;
    flag(Pseudo, "pseudo");
    flag(Desc.isBranch(), "branch");
    flag(Desc.isCall(), "call");
    flag(Desc.isReturn(), "return");
    flag(Desc.isBarrier(), "barrier");
    flag(Desc.isTerminator(), "terminator");
    flag(Desc.isIndirectBranch(), "indirect");
    flag(Desc.isTrap(), "trap");
    flag(Desc.hasUnmodeledSideEffects(), "sideeffects");
    flag(Desc.mayLoad(), "load");
    flag(Desc.mayStore(), "store");
    if (Pseudo) {  // no encoding and, often, no text: listed, never printed
      outs() << MII->getName(Opcode) << "\t" << Flags << "\t-\t-\t-\t\t\n";
      continue;
    }
    bool HasCond = false;
    for (unsigned I = 0; I < Desc.getNumOperands(); ++I)
      HasCond |= Desc.OpInfo[I].OperandType == x86::OperandCondCode;
    unsigned Form = x86::form(TS);
    bool String = Form == x86::RawFrmSrc || Form == x86::RawFrmDst || Form == x86::RawFrmDstSrc;
    for (int64_t Cond = 0; Cond < (HasCond ? x86::CondCodes : 1); ++Cond) {
      for (int Rep = 0; Rep < (String ? 2 : 1); ++Rep) {
        MCInst A, B;
        std::vector<unsigned> Widths, WidthsB;
        std::string Classes, ClassesB;
        bool Vsib = false, Filled = Forms.build(Opcode, 0, Cond, A, Widths, Classes, Vsib) &&
                                    Forms.build(Opcode, 1, Cond, B, WidthsB, ClassesB, Vsib);
        std::string Line = Flags;
        if (Vsib)
          Line += ",vsib";
        if (Rep) {
          Line += ",rep";
          A.setFlags(x86::IP_HAS_REPEAT);
          B.setFlags(x86::IP_HAS_REPEAT);
        }
        if (!Filled) {
          outs() << MII->getName(Opcode) << "\t" << Line << ",unfilled\t-\t-\t-\t\t\n";
          continue;
        }
        std::string Widths_, Cpus_;
        for (unsigned W : Widths)
          Widths_ += (Widths_.empty() ? "" : ",") + std::to_string(W);
        for (size_t C = 0; C < Cpus.size(); ++C)
          if (scheduled(*STIs[C], *MII, A))
            Cpus_ += (Cpus_.empty() ? "" : ",") + Cpus[C];
        outs() << MII->getName(Opcode) << "\t" << Line << "\t" << (Widths_.empty() ? "-" : Widths_) << "\t"
               << (Classes.empty() ? "-" : Classes) << "\t" << (Cpus_.empty() ? "-" : Cpus_) << "\t"
               << print(*Printer, *Printing, A) << "\t" << print(*Printer, *Printing, B) << "\n";
      }
    }
  }
  return 0;
}
