// parametric-mca: llvm-mca's simulation of x86 basic blocks, in process, under a per-instruction
// scheduling table of our own (DiffTune's parameter space), many blocks and many tables a process.
//
// It runs the pipeline llvm-mca runs (LLVM 14's libLLVM: the AT&T parser, mca::InstrBuilder with
// the target's InstrPostProcess and CustomBehaviour, Context::createDefaultPipeline, 100
// iterations, AssumeNoAlias, the model's dispatch width) and prints each block's Total Cycles.
// With no per-instruction entries the scheduling model is the stock one and the cycles are stock
// llvm-mca's. An entry for an opcode gives it a scheduling class of its own: a copy of the class
// the stock model resolves it to (zero idioms and other variants resolved by the stock subtarget
// first), with its latency, micro-op count and cycles per processor resource replaced as given.
//
// Protocol (stdin, one item a line; stdout, one answer line per BLOCK, RESOURCES or OPCODES):
//   TABLE                       start a new table: every override below replaces the previous table's
//   OP <opcode> <field> <value> latency N | uops N | res <resource name> N   (e.g. OP IMUL64rr latency 10)
//                               N from 0 to 1000; an opcode's cycles over all resources it names at most 10000
//   KNOB <llvm-mca option> <value>  dispatch, micro-op-queue-size, decoder-throughput, register-file-size,
//                               lqueue, squeue (0: the model's own or unbounded, as llvm-mca), noalias (0 or 1)
//   BLOCK <n>                   then n lines of AT&T assembly: answered "<total cycles>" or "error <why>"
//   RESOURCES                   answered at once: the -mcpu's processor resource names, space-separated
//   OPCODES                     answered at once: every opcode name the X86 target knows, space-separated
//   NAMES                       from here on, BLOCK is answered with its instructions' opcode names
//   DEFAULTS                    from here on, BLOCK is answered with the stock entry of each instruction,
//                               "; "-separated: <opcode> uops <n> [variant 1] [latency <n>] [<resource>[*] <cycles>]...
//                               ("*": a group listed only to cover the resources inside it; an entry that
//                               leaves it unnamed makes it follow them)
// Outside a block's lines, a line is words separated by single spaces: names are identifiers
// ([A-Za-z_][A-Za-z0-9_]*; an option [a-z-]+), values unsigned decimals. Anything else (a tab, a
// doubled or trailing space, a stray word, a sign, a value out of range, an unknown name) is
// answered "error <why>" and ends the run with exit status 1: a line the writer did not mean is
// refused, never read another way.
// Usage: parametric-mca -mcpu=haswell [-iterations=100]
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "llvm/ADT/Triple.h"
#include "llvm/MC/MCAsmInfo.h"
#include "llvm/MC/MCContext.h"
#include "llvm/MC/MCInst.h"
#include "llvm/MC/MCInstrAnalysis.h"
#include "llvm/MC/MCInstrInfo.h"
#include "llvm/MC/MCObjectFileInfo.h"
#include "llvm/MC/MCParser/MCAsmParser.h"
#include "llvm/MC/MCParser/MCTargetAsmParser.h"
#include "llvm/MC/MCRegisterInfo.h"
#include "llvm/MC/MCSchedule.h"
#include "llvm/MC/MCStreamer.h"
#include "llvm/MC/MCSubtargetInfo.h"
#include "llvm/MC/MCTargetOptions.h"
#include "llvm/MC/TargetRegistry.h"
#include "llvm/MCA/Context.h"
#include "llvm/MCA/CustomBehaviour.h"
#include "llvm/MCA/InstrBuilder.h"
#include "llvm/MCA/Pipeline.h"
#include "llvm/MCA/SourceMgr.h"
#include "llvm/MCA/Support.h"
#include "llvm/Support/Error.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/TargetSelect.h"

using namespace llvm;

extern "C" void LLVMInitializeX86TargetMCA();

namespace {

const char *Triple_ = "x86_64-unknown-linux-gnu";

// Bounds on a table's values, the same that programs/parametric.py checks before it writes a line.
// LLVM 14's MCSchedule.h keeps them in 16-bit fields: MCWriteProcResEntry::Cycles is uint16_t,
// MCWriteLatencyEntry::Cycles int16_t, MCSchedClassDesc::NumMicroOps 14 bits whose two top values
// mean "variant" and "invalid". A group's cycles are raised to what the resources inside it take,
// a sum: wrapped at 16 bits it falls short of what llvm-mca subtracts from the group, the unsigned
// difference underflows and the group is held forever (the simulation never ends). 1000 is about
// ten times the largest stock value of the x86 models (a divide's latency, about 100) and keeps one
// value far below every field; 10000 over an entry's resources keeps any group's sum (the stock
// cycles of the resources the entry leaves alone add a few dozen) far below 65535. Simulated time
// grows with the values: at the bounds a block takes at most ~1000 times its stock cycles.
constexpr long MaxValue = 1000;
constexpr long MaxEntryCycles = 10000;
constexpr long MaxKnob = 65535;
constexpr long MaxLines = 1000000;  // of one block
constexpr long MaxIterations = 1000000;

// A line's words, split at single spaces; false for anything else (an empty word: a doubled,
// leading or trailing space; a tab, a carriage return or any byte outside printable ASCII).
bool split(const std::string &Line, std::vector<std::string> &Words) {
  Words.clear();
  std::string Word;
  for (char C : Line) {
    if (C == ' ') {
      if (Word.empty()) return false;
      Words.push_back(Word);
      Word.clear();
    } else if (C < 0x21 || C > 0x7e) {
      return false;
    } else {
      Word += C;
    }
  }
  if (Word.empty()) return false;
  Words.push_back(Word);
  return true;
}

// An opcode or resource name: [A-Za-z_][A-Za-z0-9_]*, at most 128 characters.
bool isName(const std::string &W) {
  if (W.empty() || W.size() > 128 || std::isdigit(static_cast<unsigned char>(W[0]))) return false;
  return std::all_of(W.begin(), W.end(), [](char C) { return std::isalnum(static_cast<unsigned char>(C)) || C == '_'; });
}

// An llvm-mca option name: [a-z-]+, starting with a letter.
bool isOption(const std::string &W) {
  return !W.empty() && W.size() <= 64 && std::islower(static_cast<unsigned char>(W[0])) &&
         std::all_of(W.begin(), W.end(), [](char C) { return std::islower(static_cast<unsigned char>(C)) || C == '-'; });
}

// An unsigned decimal from 0 to Max, written as a program writes it (no sign, no leading zero).
bool number(const std::string &W, long Max, long &Value) {
  if (W.empty() || W.size() > 12 || (W.size() > 1 && W[0] == '0')) return false;
  if (!std::all_of(W.begin(), W.end(), [](char C) { return C >= '0' && C <= '9'; })) return false;
  Value = std::stol(W);
  return Value <= Max;
}

// Collects the instructions the assembly parser emits; everything else is ignored.
class Collector : public MCStreamer {
 public:
  std::vector<MCInst> Insts;
  explicit Collector(MCContext &Ctx) : MCStreamer(Ctx) {}
  void emitInstruction(const MCInst &Inst, const MCSubtargetInfo &) override { Insts.push_back(Inst); }
  bool emitSymbolAttribute(MCSymbol *, MCSymbolAttr) override { return true; }
  void emitCommonSymbol(MCSymbol *, uint64_t, unsigned) override {}
  void emitZerofill(MCSection *, MCSymbol *, uint64_t, unsigned, SMLoc) override {}
  void emitGPRel32Value(const MCExpr *) override {}
};

struct Override {
  int Latency = -1;                  // -1: keep the class's
  int Uops = -1;
  std::map<unsigned, int> Resources;  // processor resource index -> cycles (0 removes it)
};

struct Table;

// A resource's units (a group's mask also holds a bit of its own).
uint64_t unitsOf(uint64_t Mask) { return countPopulation(Mask) > 1 ? Mask ^ PowerOf2Floor(Mask) : Mask; }

// The resources with cycles, in the order llvm-mca's InstrBuilder takes them: fewest units first.
std::vector<unsigned> order(const std::map<unsigned, int> &Cycles, const SmallVectorImpl<uint64_t> &Masks) {
  std::vector<unsigned> Order;
  for (const auto &[R, C] : Cycles)
    if (C > 0) Order.push_back(R);
  std::sort(Order.begin(), Order.end(), [&](unsigned A, unsigned B) {
    unsigned PA = countPopulation(Masks[A]), PB = countPopulation(Masks[B]);
    return PA != PB ? PA < PB : Masks[A] < Masks[B];
  });
  return Order;
}

// The cycles each resource has left once the resources inside it took theirs, as llvm-mca subtracts.
std::map<unsigned, int> leftOver(const std::map<unsigned, int> &Cycles, const SmallVectorImpl<uint64_t> &Masks) {
  std::map<unsigned, int> Left;
  std::vector<unsigned> Order = order(Cycles, Masks);
  for (size_t I = 0; I < Order.size(); ++I) {
    int Taken = 0;
    for (size_t K = 0; K < I; ++K)
      if ((unitsOf(Masks[Order[K]]) & Masks[Order[I]]) == unitsOf(Masks[Order[K]])) Taken += Left[Order[K]];
    Left[Order[I]] = Cycles.at(Order[I]) - Taken;
  }
  return Left;
}

// What the resources inside `G` take of it, from the cycles they have (those before it in `order`).
int taken(unsigned G, const std::map<unsigned, int> &Cycles, const SmallVectorImpl<uint64_t> &Masks) {
  std::map<unsigned, int> Inside;
  for (const auto &[R, C] : Cycles)
    if (R != G && countPopulation(Masks[R]) < countPopulation(Masks[G]) &&
        (unitsOf(Masks[R]) & Masks[G]) == unitsOf(Masks[R]))
      Inside[R] = C;
  int Sum = 0;
  for (const auto &[R, L] : leftOver(Inside, Masks)) Sum += L;
  return Sum;
}

// A subtarget reading a Table: the stock model's tables plus one scheduling class per overridden
// opcode. The stock classes those opcodes name are marked variant in the copy, so that InstrBuilder
// asks resolveVariantSchedClass: it resolves through the stock subtarget (zero idioms and other
// variants), then hands an overridden opcode its own class (made on first sight: a variant's
// resolution depends on the operands) and every other opcode an unmarked copy of the stock class.
class ParamSubtarget : public MCSubtargetInfo {
 public:
  ParamSubtarget(const Triple &TT, StringRef CPU, ArrayRef<SubtargetSubTypeKV> PD, const MCSubtargetInfo &Stock,
                 Table &T);
  unsigned resolveVariantSchedClass(unsigned SchedClass, const MCInst *MI, const MCInstrInfo *MCII,
                                    unsigned CPUID) const override;

 private:
  const MCSubtargetInfo &Stock;
  Table &T;
};

// The tables of one parameter setting. Room is reserved up front: the subtarget holds pointers
// into these vectors while classes are added to them.
struct Table {
  static constexpr size_t Room = 0xffff;  // LLVM's table indices are 16-bit
  std::vector<MCSchedClassDesc> Classes;
  std::vector<MCWriteProcResEntry> ProcRes;
  std::vector<MCWriteLatencyEntry> Latency;
  std::vector<MCReadAdvanceEntry> ReadAdvance;
  MCSchedModel Model;
  unsigned StockClasses = 0;
  std::map<unsigned, Override> Overrides;                 // by opcode
  std::map<std::pair<unsigned, unsigned>, unsigned> Own;  // (opcode, stock class) -> its own class
  std::map<unsigned, unsigned> Plain;                     // marked stock class -> unmarked copy
  std::vector<SubtargetSubTypeKV> PD;
  std::unique_ptr<ParamSubtarget> STI;
  std::string Full;  // why a class could not be added, once the room is spent: the block is refused
  SmallVector<uint64_t, 32> Masks;  // each processor resource's mask, as llvm-mca computes them

  unsigned own(unsigned Opcode, unsigned Stock) {
    auto Found = Own.find({Opcode, Stock});
    if (Found != Own.end()) return Found->second;
    const Override &O = Overrides.at(Opcode);
    MCSchedClassDesc Mine = Classes[Stock];
    if (Mine.NumMicroOps == MCSchedClassDesc::VariantNumMicroOps) Mine = Classes[Plain.at(Stock)];
    const MCSchedClassDesc Base = Mine;
    if (O.Uops >= 0) Mine.NumMicroOps = O.Uops;
    size_t Needed = Base.NumWriteLatencyEntries + Base.NumWriteProcResEntries + O.Resources.size();
    if (Classes.size() + 1 > Room || Latency.size() + Needed > Room || ProcRes.size() + Needed > Room) {
      Full = "the table outgrew LLVM's 16-bit indices: give entries only to opcodes the blocks use";
      return Stock;
    }
    if (O.Latency >= 0 && Base.NumWriteLatencyEntries) {
      Mine.WriteLatencyIdx = Latency.size();
      for (unsigned K = 0; K < Base.NumWriteLatencyEntries; ++K) {
        MCWriteLatencyEntry E = Latency[Base.WriteLatencyIdx + K];
        if (K == 0) E.Cycles = O.Latency;  // the first definition's latency, as DiffTune learns it
        Latency.push_back(E);
      }
    }
    if (!O.Resources.empty()) {
      std::map<unsigned, int> Cycles;
      for (unsigned K = 0; K < Base.NumWriteProcResEntries; ++K) {
        const MCWriteProcResEntry &E = ProcRes[Base.WriteProcResIdx + K];
        Cycles[E.ProcResourceIdx] = E.Cycles;
      }
      std::map<unsigned, int> StockLeft = leftOver(Cycles, Masks);
      for (const auto &[R, C] : O.Resources) Cycles[R] = C;
      // A group's cycles must cover what the resources inside it leave to it: llvm-mca takes the
      // resources from the fewest units up and subtracts each one's remaining cycles from every
      // group holding its units (an underflow holds the group forever). A group the stock entry
      // lists only to cover the resources inside it (nothing left to it) and the entry does not
      // name follows them: it gets exactly what they take. A group named, or with cycles of its
      // own, keeps its cycles, raised where the resources inside now take more.
      for (unsigned G : order(Cycles, Masks)) {
        int Taken = taken(G, Cycles, Masks);
        bool Implied = StockLeft.count(G) && StockLeft[G] == 0 && !O.Resources.count(G);
        Cycles[G] = Implied ? Taken : std::max(Cycles[G], Taken);
      }
      for (const auto &[R, C] : Cycles)  // the bounds keep this far away; a wrapped value would hang llvm-mca
        if (C > std::numeric_limits<uint16_t>::max()) {
          Full = "cycles on a processor resource outgrew LLVM's 16-bit field: give smaller values";
          return Stock;
        }
      Mine.WriteProcResIdx = ProcRes.size();
      Mine.NumWriteProcResEntries = 0;
      for (const auto &[R, C] : Cycles)
        if (C > 0) {
          ProcRes.push_back(MCWriteProcResEntry{static_cast<uint16_t>(R), static_cast<uint16_t>(C)});
          ++Mine.NumWriteProcResEntries;
        }
    }
    Classes.push_back(Mine);
    Model.NumSchedClasses = Classes.size();
    return Own[{Opcode, Stock}] = Classes.size() - 1;
  }
};

ParamSubtarget::ParamSubtarget(const Triple &TT, StringRef CPU, ArrayRef<SubtargetSubTypeKV> PD,
                               const MCSubtargetInfo &Stock, Table &T)
    : MCSubtargetInfo(TT, CPU, CPU, "", {}, PD, T.ProcRes.data(), T.Latency.data(), T.ReadAdvance.data(), nullptr,
                      nullptr, nullptr),
      Stock(Stock), T(T) {}

unsigned ParamSubtarget::resolveVariantSchedClass(unsigned SchedClass, const MCInst *MI, const MCInstrInfo *MCII,
                                                  unsigned CPUID) const {
  const MCSchedModel &SM = Stock.getSchedModel();
  unsigned Resolved = SchedClass;
  if (SchedClass < T.StockClasses && SM.getSchedClassDesc(SchedClass)->isVariant())
    Resolved = Stock.resolveVariantSchedClass(SchedClass, MI, MCII, CPUID);
  if (Resolved >= T.StockClasses || SM.getSchedClassDesc(Resolved)->isVariant())
    return Resolved;  // one of ours already, or a chain of variants: InstrBuilder asks again
  if (T.Overrides.count(MI->getOpcode())) return T.own(MI->getOpcode(), Resolved);
  auto P = T.Plain.find(Resolved);
  return P != T.Plain.end() ? P->second : Resolved;
}

class Simulator {
 public:
  Simulator(const std::string &CPU, unsigned Iterations) : CPU(CPU), Iterations(Iterations) {
    std::string Error;
    Target = TargetRegistry::lookupTarget(Triple_, Error);
    if (!Target) fail("no x86 target: " + Error);
    STI.reset(Target->createMCSubtargetInfo(Triple_, CPU, ""));
    if (!STI || !STI->isCPUStringValid(CPU)) fail("unknown -mcpu=" + CPU);
    if (!STI->getSchedModel().hasInstrSchedModel()) fail("no scheduling model for -mcpu=" + CPU);
    MRI.reset(Target->createMCRegInfo(Triple_));
    Masks.resize(STI->getSchedModel().getNumProcResourceKinds());
    mca::computeProcResourceMasks(STI->getSchedModel(), Masks);
    MAI.reset(Target->createMCAsmInfo(*MRI, Triple_, Options));
    MCII.reset(Target->createMCInstrInfo());
    MCIA.reset(Target->createMCInstrAnalysis(MCII.get()));
    for (unsigned Op = 0; Op < MCII->getNumOpcodes(); ++Op) Opcodes[MCII->getName(Op).str()] = Op;
    const MCSchedModel &SM = STI->getSchedModel();
    for (unsigned R = 1; R < SM.getNumProcResourceKinds(); ++R)  // 0 is LLVM's invalid unit: no resource
      Resources[SM.getProcResource(R)->Name] = R;
  }

  // The names a table may use, space-separated: the -mcpu's processor resources, or every opcode.
  std::string resourceNames() const { return joined(Resources); }
  std::string opcodeNames() const { return joined(Opcodes); }

  void resetTable() {
    Overrides.clear();
    Current.reset();
    Knobs = GlobalKnobs();
  }

  // llvm-mca's global options, as its command line sets them.
  struct GlobalKnobs {
    unsigned Dispatch = 0, MicroOpQueue = 0, Decoders = 0, RegisterFile = 0, LoadQueue = 0, StoreQueue = 0;
    bool NoAlias = true;
  } Knobs;

  std::string knob(const std::string &Name, long Value) {
    if (Name == "noalias" && Value > 1) return "noalias is 0 or 1, not " + std::to_string(Value);
    if (Name == "dispatch") Knobs.Dispatch = Value;
    else if (Name == "micro-op-queue-size") Knobs.MicroOpQueue = Value;
    else if (Name == "decoder-throughput") Knobs.Decoders = Value;
    else if (Name == "register-file-size") Knobs.RegisterFile = Value;
    else if (Name == "lqueue") Knobs.LoadQueue = Value;
    else if (Name == "squeue") Knobs.StoreQueue = Value;
    else if (Name == "noalias") Knobs.NoAlias = Value != 0;
    else return "unknown option " + Name;
    return "";
  }

  std::string override(const std::string &Opcode, const std::string &Field, const std::string &Name, int Value) {
    auto Op = Opcodes.find(Opcode);
    if (Op == Opcodes.end()) return "unknown opcode " + Opcode;
    if (Field == "res" && !Resources.count(Name)) return "unknown processor resource " + Name;
    if (Field != "latency" && Field != "uops" && Field != "res") return "unknown field " + Field;
    Override &O = Overrides[Op->second];
    if (Field == "latency") O.Latency = Value;
    else if (Field == "uops") O.Uops = Value;
    else O.Resources[Resources.at(Name)] = Value;
    long Sum = 0;
    for (const auto &[R, C] : O.Resources) Sum += C;
    if (Sum > MaxEntryCycles)
      return Opcode + " res: its cycles add up to " + std::to_string(Sum) + ", more than " +
             std::to_string(MaxEntryCycles) + " over all its resources";
    Current.reset();
    return "";
  }

  bool Names = false;     // answer blocks with their opcode names instead of simulating them
  bool Entries = false;    // answer blocks with each instruction's stock entry
  SmallVector<uint64_t, 32> Masks;  // each processor resource's mask, as llvm-mca computes them

  // Total cycles of one block, or an error (returned in Why); in Names mode, -2 and the names in Why.
  long simulate(const std::string &Assembly, std::string &Why) {
    const MCSubtargetInfo &Sim = subtarget();
    llvm::SourceMgr SrcMgr;
    std::string Diagnostics;
    SrcMgr.setDiagHandler(
        [](const SMDiagnostic &D, void *Ctx) {
          if (D.getKind() == SourceMgr::DK_Error && static_cast<std::string *>(Ctx)->empty())
            *static_cast<std::string *>(Ctx) = D.getMessage().str();
        },
        &Diagnostics);
    SrcMgr.AddNewSourceBuffer(MemoryBuffer::getMemBufferCopy(Assembly), SMLoc());
    MCContext Ctx(Triple(Triple_), MAI.get(), MRI.get(), STI.get(), &SrcMgr);
    std::unique_ptr<MCObjectFileInfo> MOFI(Target->createMCObjectFileInfo(Ctx, false));
    Ctx.setObjectFileInfo(MOFI.get());
    Collector Out(Ctx);
    std::unique_ptr<MCAsmParser> Parser(createMCAsmParser(SrcMgr, Ctx, Out, *MAI));
    std::unique_ptr<MCTargetAsmParser> TAP(Target->createMCAsmParser(*STI, *Parser, *MCII, Options));
    if (!TAP) { Why = "no assembly parser"; return -1; }
    Parser->setAssemblerDialect(0);
    Parser->setTargetParser(*TAP);
    if (Parser->Run(false) || !Diagnostics.empty()) {
      Why = Diagnostics.empty() ? "the block does not assemble" : Diagnostics;
      return -1;
    }
    if (Out.Insts.empty()) { Why = "no instructions"; return -1; }
    if (Names) {
      for (const MCInst &MCI : Out.Insts) Why += (Why.empty() ? "" : " ") + MCII->getName(MCI.getOpcode()).str();
      return -2;
    }
    if (Entries) {
      for (const MCInst &MCI : Out.Insts) Why += (Why.empty() ? "" : "; ") + stockEntry(MCI);
      return -2;
    }

    mca::InstrBuilder IB(Sim, *MCII, *MRI, MCIA.get());
    std::unique_ptr<mca::InstrPostProcess> IPP(Target->createInstrPostProcess(Sim, *MCII));
    if (!IPP) IPP = std::make_unique<mca::InstrPostProcess>(Sim, *MCII);
    std::vector<std::unique_ptr<mca::Instruction>> Lowered;
    for (const MCInst &MCI : Out.Insts) {
      Expected<std::unique_ptr<mca::Instruction>> Inst = IB.createInstruction(MCI);
      if (!Inst) {
        Why = toString(Inst.takeError());
        return -1;
      }
      IPP->postProcessInstruction(Inst.get(), MCI);
      Lowered.emplace_back(std::move(Inst.get()));
    }
    if (Current && !Current->Full.empty()) {  // an opcode would have run on its stock class: say so instead
      Why = Current->Full;
      return -1;
    }
    mca::SourceMgr S(Lowered, Iterations);
    std::unique_ptr<mca::CustomBehaviour> CB(Target->createCustomBehaviour(Sim, S, *MCII));
    if (!CB) CB = std::make_unique<mca::CustomBehaviour>(Sim, S, *MCII);
    mca::Context MCA(*MRI, Sim);
    unsigned Dispatch = Knobs.Dispatch ? Knobs.Dispatch : Sim.getSchedModel().IssueWidth;  // as llvm-mca does
    mca::PipelineOptions PO(Knobs.MicroOpQueue, Knobs.Decoders, Dispatch, Knobs.RegisterFile,
                            Knobs.LoadQueue, Knobs.StoreQueue, Knobs.NoAlias);
    std::unique_ptr<mca::Pipeline> P = MCA.createDefaultPipeline(PO, S, *CB);
    Expected<unsigned> Cycles = P->run();
    if (!Cycles) {
      Why = toString(Cycles.takeError());
      return -1;
    }
    return *Cycles;
  }

 private:
  static std::string joined(const std::map<std::string, unsigned> &Names) {
    std::string Line;
    for (const auto &[Name, Index] : Names) Line += (Line.empty() ? "" : " ") + Name;
    return Line;
  }

  [[noreturn]] static void fail(const std::string &Message) {
    std::cerr << "parametric-mca: " << Message << "\n";
    std::exit(2);
  }

  const MCSubtargetInfo &subtarget() {
    if (Overrides.empty()) return *STI;
    if (!Current) Current = build();
    return *Current->STI;
  }

  // An instruction's stock entry, from the class the stock model resolves it to (as InstrBuilder does).
  std::string stockEntry(const MCInst &MCI) const {
    const MCSchedModel &SM = STI->getSchedModel();
    unsigned Class = MCII->get(MCI.getOpcode()).getSchedClass();
    bool Variant = Class && SM.getSchedClassDesc(Class)->isVariant();
    while (Class && SM.getSchedClassDesc(Class)->isVariant())
      Class = STI->resolveVariantSchedClass(Class, &MCI, MCII.get(), SM.getProcessorID());
    const MCSchedClassDesc *SC = SM.getSchedClassDesc(Class);
    std::string Entry = MCII->getName(MCI.getOpcode()).str() + " uops " + std::to_string(SC->NumMicroOps);
    if (Variant) Entry += " variant 1";
    if (SC->NumWriteLatencyEntries) Entry += " latency " + std::to_string(STI->getWriteLatencyEntry(SC, 0)->Cycles);
    std::map<unsigned, int> Cycles;
    for (unsigned K = 0; K < SC->NumWriteProcResEntries; ++K) {
      const MCWriteProcResEntry *E = STI->getWriteProcResBegin(SC) + K;
      Cycles[E->ProcResourceIdx] = E->Cycles;
    }
    std::map<unsigned, int> Left = leftOver(Cycles, Masks);
    for (const auto &[R, C] : Cycles)  // "*": a group listed only to cover the resources inside it
      Entry += std::string(" ") + SM.getProcResource(R)->Name + (Left[R] == 0 && countPopulation(Masks[R]) > 1 ? "* " : " ") +
               std::to_string(C);
    return Entry;
  }

  // The stock tables, copied, with room for a class of its own for each overridden opcode.
  std::unique_ptr<Table> build() {
    const MCSchedModel &SM = STI->getSchedModel();
    auto T = std::make_unique<Table>();
    unsigned N = T->StockClasses = SM.NumSchedClasses;
    T->Classes.reserve(Table::Room);
    T->ProcRes.reserve(Table::Room);
    T->Latency.reserve(Table::Room);
    T->Classes.assign(SM.SchedClassTable, SM.SchedClassTable + N);
    size_t NProcRes = 0, NLatency = 0;
    for (const MCSchedClassDesc &C : T->Classes) {
      NProcRes = std::max<size_t>(NProcRes, C.WriteProcResIdx + C.NumWriteProcResEntries);
      NLatency = std::max<size_t>(NLatency, C.WriteLatencyIdx + C.NumWriteLatencyEntries);
    }
    const MCSchedClassDesc *First = SM.getSchedClassDesc(0);  // the tables' starts, through classes' views
    const MCSchedClassDesc *Writer = First;
    while (Writer != SM.SchedClassTable + N - 1 && !Writer->NumWriteLatencyEntries) ++Writer;
    const MCWriteProcResEntry *PR = STI->getWriteProcResBegin(First) - First->WriteProcResIdx;
    const MCWriteLatencyEntry *WL = STI->getWriteLatencyEntry(Writer, 0) - Writer->WriteLatencyIdx;
    T->ProcRes.assign(PR, PR + NProcRes);
    T->Latency.assign(WL, WL + NLatency);
    for (const MCSchedClassDesc &C : T->Classes) {  // the read-advance table, through each class's view of it
      ArrayRef<MCReadAdvanceEntry> RA = STI->getReadAdvanceEntries(C);
      if (T->ReadAdvance.size() < C.ReadAdvanceIdx + RA.size()) T->ReadAdvance.resize(C.ReadAdvanceIdx + RA.size());
      for (size_t K = 0; K < RA.size(); ++K) T->ReadAdvance[C.ReadAdvanceIdx + K] = RA[K];
    }
    if (T->ReadAdvance.empty()) T->ReadAdvance.resize(1);
    T->Overrides = Overrides;
    T->Masks = Masks;
    std::set<unsigned> Marked;  // non-variant stock classes of overridden opcodes
    for (const auto &[Opcode, O] : Overrides) {
      unsigned Class = MCII->get(Opcode).getSchedClass();
      if (Class < N && !T->Classes[Class].isVariant()) Marked.insert(Class);
    }
    for (unsigned Class : Marked) {  // the other opcodes of a marked class resolve to an unmarked copy
      T->Plain[Class] = T->Classes.size();
      T->Classes.push_back(T->Classes[Class]);
      T->Classes[Class].NumMicroOps = MCSchedClassDesc::VariantNumMicroOps;
    }
    T->Model = SM;
    T->Model.SchedClassTable = T->Classes.data();
    T->Model.NumSchedClasses = T->Classes.size();
    T->PD.push_back(SubtargetSubTypeKV{CPU.c_str(), FeatureBitArray({}), FeatureBitArray({}), &T->Model});
    T->STI = std::make_unique<ParamSubtarget>(Triple(Triple_), CPU, T->PD, *STI, *T);
    return T;
  }

  std::string CPU;
  unsigned Iterations;
  const llvm::Target *Target = nullptr;
  MCTargetOptions Options;
  std::unique_ptr<MCSubtargetInfo> STI;
  std::unique_ptr<MCRegisterInfo> MRI;
  std::unique_ptr<MCAsmInfo> MAI;
  std::unique_ptr<MCInstrInfo> MCII;
  std::unique_ptr<MCInstrAnalysis> MCIA;
  std::map<std::string, unsigned> Opcodes, Resources;
  std::map<unsigned, Override> Overrides;
  std::unique_ptr<Table> Current;
};

}  // namespace

// Refuses the input: the reason on stdout (where the answers go), exit status 1.
[[noreturn]] void refuse(const std::string &Why) {
  std::cout << "error " << Why << "\n" << std::flush;
  std::exit(1);
}

int main(int argc, char **argv) {
  std::string CPU = "haswell";
  long Iterations = 100;
  for (int K = 1; K < argc; ++K) {
    std::string Arg = argv[K];
    if (Arg.rfind("-mcpu=", 0) == 0) {
      CPU = Arg.substr(6);
    } else if (Arg.rfind("-iterations=", 0) == 0) {
      if (!number(Arg.substr(12), MaxIterations, Iterations) || Iterations < 1) {
        std::cerr << "parametric-mca: -iterations is a whole number from 1 to " << MaxIterations << "\n";
        return 2;
      }
    } else {
      std::cerr << "parametric-mca: unknown argument " << Arg << "\n";
      return 2;
    }
  }
  LLVMInitializeX86TargetInfo();
  LLVMInitializeX86TargetMC();
  LLVMInitializeX86AsmParser();
  LLVMInitializeX86TargetMCA();
  Simulator Sim(CPU, Iterations);
  std::ios::sync_with_stdio(false);
  std::string Line;
  std::vector<std::string> W;
  while (std::getline(std::cin, Line)) {
    if (!split(Line, W)) refuse("malformed line (words separated by single spaces, printable ASCII): " +
                                Line.substr(0, 80));
    const std::string &Kind = W[0];
    long Value = 0;
    if (Kind == "TABLE" && W.size() == 1) {
      Sim.resetTable();
    } else if (Kind == "OP" && (W.size() == 4 || (W.size() == 5 && W[2] == "res"))) {
      const std::string &Opcode = W[1], &Field = W[2], &Name = W.size() == 5 ? W[3] : "";
      if (!isName(Opcode) || (W.size() == 5 && !isName(Name)))
        refuse("malformed name in: " + Line.substr(0, 80));
      if (!number(W.back(), MaxValue, Value))
        refuse(Opcode + " " + Field + (Name.empty() ? "" : " " + Name) + ": " + W.back().substr(0, 20) +
               " is not a whole number from 0 to " + std::to_string(MaxValue));
      std::string Why = Sim.override(Opcode, Field, Name, static_cast<int>(Value));
      if (!Why.empty()) refuse(Why);
    } else if (Kind == "NAMES" && W.size() == 1) {
      Sim.Names = true;
    } else if (Kind == "DEFAULTS" && W.size() == 1) {
      Sim.Entries = true;
    } else if (Kind == "RESOURCES" && W.size() == 1) {
      std::cout << Sim.resourceNames() << "\n" << std::flush;
    } else if (Kind == "OPCODES" && W.size() == 1) {
      std::cout << Sim.opcodeNames() << "\n" << std::flush;
    } else if (Kind == "KNOB" && W.size() == 3) {
      if (!isOption(W[1])) refuse("malformed option name in: " + Line.substr(0, 80));
      if (!number(W[2], MaxKnob, Value))
        refuse(W[1] + ": " + W[2].substr(0, 20) + " is not a whole number from 0 to " + std::to_string(MaxKnob));
      std::string Why = Sim.knob(W[1], Value);
      if (!Why.empty()) refuse(Why);
    } else if (Kind == "BLOCK" && W.size() == 2) {
      long Lines = 0;
      if (!number(W[1], MaxLines, Lines) || Lines < 1)
        refuse("BLOCK takes its number of lines, from 1 to " + std::to_string(MaxLines));
      std::string Assembly, Text;
      for (long K = 0; K < Lines; ++K) {
        if (!std::getline(std::cin, Text)) refuse("the input ended inside a block");
        Assembly += Text + "\n";
      }
      std::string Why;
      long Cycles = Sim.simulate(Assembly, Why);
      if (Cycles == -2) {
        std::cout << Why << "\n";
      } else if (Cycles < 0) {
        for (char &C : Why)
          if (C == '\n') C = ' ';
        std::cout << "error " << Why << "\n";
      } else {
        std::cout << Cycles << "\n";
      }
      std::cout << std::flush;
    } else {
      static const std::set<std::string> Kinds = {"TABLE", "OP", "NAMES", "DEFAULTS", "RESOURCES", "OPCODES", "KNOB", "BLOCK"};
      refuse((Kinds.count(Kind) ? "malformed " + Kind + " line: " : "unknown line: ") + Line.substr(0, 80));
    }
  }
  return 0;
}
