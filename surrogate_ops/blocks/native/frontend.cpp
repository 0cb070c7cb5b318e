// The compiled front end: x86 blocks, as AT&T text or as machine-code hex, to the model's input
// arrays (token ids per instruction with their def-use edge tokens), without Python per instruction.
//
// It is a port of the Python front end (blocks/asm.py's checks and normalization, tokenizer.py's
// tokens, blocks/deps.py's def-use edges, blocks/hexcode.py's in-process disassembly), which stays
// the reference: a test holds the two to identical arrays on every BHive block and on blocks of
// real libraries. This side takes only the common case and defers everything else to Python, block
// by block: a line the checks would refuse (Python words the error), a bare prefix line, a token
// outside the vocabulary (Python backs it off to a relative or calls it unknown), an empty or
// over-long block. A deferred block costs what it cost before; nothing here can answer differently.
//
// Built by blocks/native.py with g++ (no LLVM headers: the C disassembler API of the libLLVM that
// llvm-mc links is opened with dlopen), called through ctypes, which lets go of the GIL: a call's
// blocks are shared by `threads` threads, each with its own caches (a state checked out of a pool,
// so concurrent calls from a service's threads never share one).

#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace {

using std::string;
using std::string_view;

constexpr size_t kMaxLine = 256;  // asm.MAX_LINE
constexpr size_t kLineCache = 1 << 17;  // distinct raw lines remembered per state
const char* const kPrefixes[] = {"lock", "rep", "repe", "repz", "repne", "repnz", "data16", "data32",
                                 "rex64", "notrack", "xacquire", "xrelease", "bnd"};
const char* const kRepeats[] = {"rep", "repe", "repz", "repne", "repnz"};

bool is_word(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool hex_digit(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
// what Python's str.strip() and str.split() take for whitespace, among ASCII bytes
bool is_py_space(unsigned char c) { return c == ' ' || (c >= 9 && c <= 13) || (c >= 28 && c <= 31); }

bool starts(string_view s, string_view p) { return s.size() >= p.size() && s.compare(0, p.size(), p) == 0; }

template <size_t N>
bool starts_any(string_view s, const char* const (&stems)[N]) {
  for (const char* p : stems)
    if (starts(s, p)) return true;
  return false;
}

template <size_t N>
bool one_of(string_view s, const char* const (&words)[N]) {
  for (const char* p : words)
    if (s == p) return true;
  return false;
}

bool is_prefix(string_view w) { return one_of(w, kPrefixes); }

string lower(string_view s) {
  string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
  return out;
}

std::vector<string_view> split_ws(string_view s) {  // str.split(): runs of whitespace, no empty words
  std::vector<string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && is_py_space((unsigned char)s[i])) ++i;
    size_t j = i;
    while (j < s.size() && !is_py_space((unsigned char)s[j])) ++j;
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

std::vector<string_view> split_on(string_view s, string_view sep) {  // str.split(sep)
  std::vector<string_view> out;
  size_t start = 0;
  while (true) {
    size_t k = s.find(sep, start);
    if (k == string_view::npos) {
      out.push_back(s.substr(start));
      return out;
    }
    out.push_back(s.substr(start, k - start));
    start = k + sep.size();
  }
}

// ---- asm.py: checks and the canonical form --------------------------------------------------

bool allowed_char(unsigned char c) {  // asm._ALLOWED
  return is_word(char(c)) || std::strchr("%$(),:*+-. \t{}", c) != nullptr;
}

bool pseudo_prefix(string_view w) { return !w.empty() && w[0] == '{'; }  // `{vex}` and the like: deferred

bool mnemonic_like(string_view w) {  // asm._MNEMONIC
  if (w.empty() || !((w[0] >= 'a' && w[0] <= 'z') || (w[0] >= 'A' && w[0] <= 'Z'))) return false;
  size_t i = 1;
  while (i < w.size() && is_word(w[i])) ++i;
  if (i == w.size()) return true;
  string_view rest = w.substr(i);
  return rest == ".s" || rest == ".d8" || rest == ".d32";
}

// asm.split_operands: split at commas outside parentheses and braces, whitespace removed in each
std::vector<string> split_operands(string_view text) {
  std::vector<string_view> pieces = split_on(text, ",");
  std::vector<string> parts;
  bool nested = text.find('(') != string_view::npos || text.find('{') != string_view::npos;
  if (nested) {
    int depth = 0;
    for (string_view piece : pieces) {
      if (depth) {
        parts.back() += ",";
        parts.back() += piece;
      } else {
        parts.emplace_back(piece);
      }
      for (char c : piece) depth += (c == '(' || c == '{') - (c == ')' || c == '}');
    }
  } else {
    for (string_view piece : pieces) parts.emplace_back(piece);
  }
  for (string& p : parts) p.erase(std::remove_if(p.begin(), p.end(), [](char c) { return is_py_space((unsigned char)c); }), p.end());
  return parts;
}

// asm.normalize_instruction; false where Python would take another path (a pseudo-prefix) or fail
bool normalize(string_view line, string& out) {
  std::vector<string_view> words = split_ws(line);
  if (words.empty()) return false;
  size_t k = 0;
  out.clear();
  while (words.size() - k > 1 && (is_prefix(lower(words[k])) || pseudo_prefix(words[k]))) {
    if (pseudo_prefix(words[k])) return false;
    out += lower(words[k]);
    out += ' ';
    ++k;
  }
  out += lower(words[k]);
  ++k;
  if (k == words.size()) return true;
  string rest;
  for (size_t i = k; i < words.size(); ++i) {
    if (i > k) rest += ' ';
    rest += words[i];
  }
  std::vector<string> operands = split_operands(rest);
  out += ' ';
  for (size_t i = 0; i < operands.size(); ++i) {
    if (i) out += ", ";
    out += operands[i];
  }
  return true;
}

// asm.canonical_line's checks: true where Python accepts the line (false: Python refuses it, or
// it is a case left to Python)
bool acceptable(string_view line) {
  if (line.size() > kMaxLine) return false;
  for (unsigned char c : line)
    if (!allowed_char(c)) return false;
  std::vector<string_view> words = split_ws(line);
  size_t k = 0;
  while (k + 1 < words.size() && (is_prefix(lower(words[k])) || pseudo_prefix(words[k]))) {
    if (pseudo_prefix(words[k])) return false;
    ++k;
  }
  string_view head = words[k];
  if (head.find(':') != string_view::npos || head[0] == '.') return false;
  if (!is_prefix(lower(head)) && !mnemonic_like(head)) return false;
  // a literal over 64 bits (asm._LONG_LITERAL, then its value): refused, so left to Python
  for (size_t i = 0; i < line.size(); ++i) {
    if (!is_digit(line[i]) || (i > 0 && (is_word(line[i - 1]) || line[i - 1] == '%'))) continue;
    size_t j = i, digits = 0;
    if (line[i] == '0' && i + 1 < line.size() && (line[i + 1] == 'x' || line[i + 1] == 'X')) {
      j = i + 2;
      while (j < line.size() && hex_digit(line[j])) ++j;
      digits = j - i - 2;
      if (digits >= 17) {
        size_t k = i + 2;
        while (k < j && line[k] == '0') ++k;
        if (j - k > 16) return false;
      }
      continue;
    }
    while (j < line.size() && is_digit(line[j])) ++j;
    if (j - i >= 20) {
      size_t k = i;
      while (k < j && line[k] == '0') ++k;
      string_view value = line.substr(k, j - k);
      if (value.size() > 20 || (value.size() == 20 && value > "18446744073709551615")) return false;
    }
  }
  return true;
}

// ---- tokenizer.py: tokens ------------------------------------------------------------------

// the value of a Python int(text, 0) when it is small (-1 .. 16): 1 and the value, 0 when it is
// some other integer, -1 where Python might read it otherwise (underscores, octal, binary...)
int small_immediate(string_view s, long& value) {
  bool negative = false;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
    negative = s[0] == '-';
    s.remove_prefix(1);
  }
  if (s.empty()) return -1;
  int base = 10;
  if (s.size() > 1 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    base = 16;
    s.remove_prefix(2);
    if (s.empty()) return -1;
  } else if (s[0] == '0') {  // decimal with a leading zero: only zeros are valid
    for (char c : s)
      if (c != '0') return -1;
    value = 0;
    return 1;
  }
  size_t i = 0;
  while (i < s.size() && s[i] == '0') ++i;
  string_view digits = s.substr(i);
  for (char c : digits) {
    bool ok = base == 10 ? is_digit(c) : (is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'));
    if (!ok) return -1;
  }
  if (digits.size() > 3) return 0;
  long v = 0;
  for (char c : digits) v = v * base + (is_digit(c) ? c - '0' : (c | 0x20) - 'a' + 10);
  value = negative ? -v : v;
  return value >= -1 && value <= 16 ? 1 : 0;
}

// an %\w+ at s[i]: its end, or i where there is none
size_t register_at(string_view s, size_t i) {
  if (i >= s.size() || s[i] != '%') return i;
  size_t j = i + 1;
  while (j < s.size() && is_word(s[j])) ++j;
  return j > i + 1 ? j : i;
}

// tokenizer._MEMORY: ^(?:(%\w+):)?([^(]*)\((%\w+)?(?:,(%\w+)?(?:,(\d+))?)?\)$
bool memory_operand(string_view s, string_view& segment, string_view& disp, string_view& base, string_view& index,
                    string_view& scale) {
  size_t pos = 0;
  segment = disp = base = index = scale = string_view();
  size_t end = register_at(s, 0);
  if (end > 0 && end < s.size() && s[end] == ':') {
    segment = s.substr(0, end);
    pos = end + 1;
  }
  size_t open = s.find('(', pos);
  if (open == string_view::npos) return false;
  disp = s.substr(pos, open - pos);
  pos = open + 1;
  auto optional_register = [&](string_view& into) {  // (%\w+)?
    size_t stop = register_at(s, pos);
    into = s.substr(pos, stop - pos);
    pos = stop;
  };
  optional_register(base);
  if (pos < s.size() && s[pos] == ',') {
    ++pos;
    optional_register(index);
    if (pos < s.size() && s[pos] == ',') {
      ++pos;
      size_t j = pos;
      while (j < s.size() && is_digit(s[j])) ++j;
      if (j == pos) return false;
      scale = s.substr(pos, j - pos);
      pos = j;
    }
  }
  return pos + 1 == s.size() && s[pos] == ')';
}

// tokenizer._operand_tokens
void operand_tokens(string_view operand, std::vector<string>& tokens) {
  if (!operand.empty() && operand[0] == '*') {
    tokens.emplace_back("*");
    operand.remove_prefix(1);
  }
  std::vector<string> masks;
  string bare;
  if (operand.find('{') != string_view::npos) {  // \{[^}]*\} matches, taken out
    size_t i = 0;
    while (i < operand.size()) {
      if (operand[i] == '{') {
        size_t j = operand.find('}', i + 1);
        if (j == string_view::npos) {
          bare.append(operand.substr(i));
          break;
        }
        masks.emplace_back(operand.substr(i, j - i + 1));
        i = j + 1;
      } else {
        bare += operand[i++];
      }
    }
  } else {
    bare.assign(operand);
  }
  // strip() (the canonical form holds no whitespace inside an operand; kept for exactness)
  size_t a = 0, b = bare.size();
  while (a < b && is_py_space((unsigned char)bare[a])) ++a;
  while (b > a && is_py_space((unsigned char)bare[b - 1])) --b;
  string_view op = string_view(bare).substr(a, b - a);
  if (!op.empty() && op[0] == '%' && op.find(':') == string_view::npos) {
    tokens.emplace_back(op);
  } else if (!op.empty() && op[0] == '$') {
    long value = 0;
    int small = small_immediate(op.substr(1), value);
    if (small < 0) {
      tokens.emplace_back("\x01");  // Python's int() decides: left to Python
    } else {
      tokens.emplace_back(small ? "$" + std::to_string(value) : "$IMM");
    }
  } else {
    string_view segment, disp, base, index, scale;
    if (memory_operand(op, segment, disp, base, index, scale)) {
      tokens.emplace_back("[");
      if (!segment.empty()) tokens.emplace_back(string(segment) + ":");
      if (!base.empty())
        tokens.emplace_back(base);
      else if (!index.empty())
        tokens.emplace_back("_");
      if (!index.empty()) tokens.emplace_back(index);
      if (!scale.empty() && scale != "1") tokens.emplace_back("*" + string(scale));
      if (!disp.empty() && disp != "0" && disp != "-0") tokens.emplace_back("DISP");
      tokens.emplace_back("]");
    } else if (op.find(':') != string_view::npos) {
      tokens.emplace_back("[");
      tokens.emplace_back(string(op.substr(0, op.find(':'))) + ":");
      tokens.emplace_back("DISP");
      tokens.emplace_back("]");
    } else if (!op.empty()) {
      tokens.emplace_back("ADDR");
    }
  }
  for (string& m : masks) tokens.push_back(std::move(m));
}

// tokenizer.instruction_tokens, for a canonical instruction
void instruction_tokens(string_view instruction, std::vector<string>& tokens) {
  std::vector<string_view> words = split_ws(instruction);
  size_t k = 0;
  while (words.size() - k > 1 && is_prefix(words[k])) tokens.emplace_back(words[k++]);
  if (k < words.size()) tokens.emplace_back(words[k++]);
  if (k == words.size()) return;
  string rest;
  for (size_t i = k; i < words.size(); ++i) {
    if (i > k) rest += ' ';
    rest += words[i];
  }
  std::vector<string_view> operands = split_on(rest, ", ");
  for (size_t i = 0; i < operands.size(); ++i) {
    if (i) tokens.emplace_back(",");
    operand_tokens(operands[i], tokens);
  }
}

// ---- deps.py: what an instruction reads and writes --------------------------------------------

struct Register {
  string family;
  bool partial;
};

bool deps_register(string_view operand, Register& out) {  // deps._register
  size_t a = 0;
  while (a < operand.size() && (operand[a] == '*' || operand[a] == '%')) ++a;
  string_view name = operand.substr(a);
  name = name.substr(0, name.find('{'));
  size_t b = 0, e = name.size();
  while (b < e && is_py_space((unsigned char)name[b])) ++b;
  while (e > b && is_py_space((unsigned char)name[e - 1])) --e;
  string n = lower(name.substr(b, e - b));
  static const std::unordered_map<string, Register> gprs = [] {
    std::unordered_map<string, Register> m;
    const char* fam[] = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"};
    for (const char* f : fam) {
      m[f] = {f, false};
      m[string("e") + (f + 1)] = {f, false};
      m[string(f + 1)] = {f, true};
    }
    const char* low[][2] = {{"al", "rax"}, {"bl", "rbx"}, {"cl", "rcx"}, {"dl", "rdx"}, {"ah", "rax"}, {"bh", "rbx"},
                            {"ch", "rcx"}, {"dh", "rdx"}, {"sil", "rsi"}, {"dil", "rdi"}, {"bpl", "rbp"}, {"spl", "rsp"}};
    for (auto& p : low) m[p[0]] = {p[1], true};
    return m;
  }();
  auto found = gprs.find(n);
  if (found != gprs.end()) {
    out = found->second;
    return true;
  }
  // ^r(\d+)([dwb]?)$  (the table's r0..r31 with suffixes agree with this)
  if (n.size() >= 2 && n[0] == 'r' && is_digit(n[1])) {
    size_t j = 1;
    while (j < n.size() && is_digit(n[j])) ++j;
    string suffix = n.substr(j);
    if (suffix.empty() || suffix == "d" || suffix == "w" || suffix == "b") {
      out = {"r" + n.substr(1, j - 1), suffix == "w" || suffix == "b"};
      return true;
    }
    return false;
  }
  // ^[xyz]mm(\d+)$
  if (n.size() >= 4 && (n[0] == 'x' || n[0] == 'y' || n[0] == 'z') && n[1] == 'm' && n[2] == 'm') {
    for (size_t j = 3; j < n.size(); ++j)
      if (!is_digit(n[j])) return false;
    out = {"v" + n.substr(3), false};
    return true;
  }
  return false;
}

struct Address {
  string expression;
  std::vector<string> reads;  // register families, without rip
};

bool deps_address(string_view operand, Address& out) {  // deps._address
  size_t a = 0;
  while (a < operand.size() && operand[a] == '*') ++a;
  string_view s = operand.substr(a);
  s = s.substr(0, s.find('{'));
  size_t b = 0, e = s.size();
  while (b < e && is_py_space((unsigned char)s[b])) ++b;
  while (e > b && is_py_space((unsigned char)s[e - 1])) --e;
  s = s.substr(b, e - b);
  if (s.find('(') == string_view::npos && s.find(':') == string_view::npos) return false;
  out.expression.assign(s);
  out.reads.clear();
  string_view tail = s.substr(s.rfind(':') == string_view::npos ? 0 : s.rfind(':') + 1);
  for (size_t i = 0; i < tail.size(); ++i) {  // %\w+
    if (tail[i] != '%') continue;
    size_t j = i + 1;
    while (j < tail.size() && is_word(tail[j])) ++j;
    if (j > i + 1) {
      Register r;
      if (deps_register(tail.substr(i, j - i), r) && r.family != "rip" &&
          std::find(out.reads.begin(), out.reads.end(), r.family) == out.reads.end())
        out.reads.push_back(r.family);
      i = j - 1;
    }
  }
  return true;
}

const char* const kWriteOnly[] = {"mov", "lea", "set", "cvt", "pop", "lzcnt", "tzcnt", "popcnt", "pshuf", "sqrtp",
                                  "rcpp", "rsqrtp", "pmovzx", "pmovsx", "vbroadcast", "vextract", "vperm",
                                  "vpbroadcast", "cqto", "cltq", "cwtl"};
const char* const kCompares[] = {"cmp", "test", "ucomis", "comis", "bt", "ptest", "vptest", "vucomis", "vcomis"};
const char* const kFlagWriters[] = {"add", "sub", "and", "or", "xor", "adc", "sbb", "cmp", "test", "inc", "dec",
                                    "neg", "shl", "shr", "sar", "sal", "rol", "ror", "rcl", "rcr", "imul", "mul",
                                    "bsf", "bsr", "popcnt", "lzcnt", "tzcnt", "bt", "ucomis", "comis", "vucomis",
                                    "vcomis", "ptest", "vptest"};
const char* const kFlagReaders[] = {"adc", "sbb", "cmov", "set", "rcl", "rcr"};
const char* const kZeroIdioms[] = {"xor", "sub", "pxor", "xorp", "vxorp", "vpxor", "psub", "vpsub", "pcmpeq",
                                   "vpcmpeq", "sbb"};
const char* const kZeroIdioms3[] = {"vxorp", "vpxor", "vpsub"};
const char* const kVexReadsDest[] = {"vfmadd", "vfmsub", "vfnmadd", "vfnmsub", "vfmaddsub", "vfmsubadd"};
const char* const kMulDiv[] = {"mul", "div", "idiv"};
const char* const kSourcesOnly[] = {"mul", "div", "idiv", "push", "jmp", "call", "imul"};

bool string_op(string_view m) {  // deps._STRING: ^(?:stos|lods|scas|movs|cmps)[bwlq]$
  const char* const stems[] = {"stos", "lods", "scas", "movs", "cmps"};
  return m.size() == 5 && starts_any(m, stems) && std::strchr("bwlq", m[4]) != nullptr;
}

// A small ordered set of strings (Python's sets; the order never reaches the output, which is sorted)
struct Keys {
  std::vector<string> items;
  void add(const string& k) {
    if (std::find(items.begin(), items.end(), k) == items.end()) items.push_back(k);
  }
  void remove(const string& k) { items.erase(std::remove(items.begin(), items.end(), k), items.end()); }
};

// deps.uses_defs: keys read and written; memory keys start with '@'
void uses_defs(string_view instruction, std::vector<string>& uses, std::vector<string>& defs) {
  uses.clear();
  defs.clear();
  auto partition = [](string_view s, string_view& head, string_view& rest) {
    size_t k = s.find(' ');
    head = s.substr(0, k);
    rest = k == string_view::npos ? string_view() : s.substr(k + 1);
  };
  string_view head, rest;
  partition(instruction, head, rest);
  bool repeated = false;
  while (!rest.empty() && is_prefix(head)) {
    repeated = repeated || one_of(head, kRepeats);
    partition(rest, head, rest);
  }
  if (head.empty()) return;
  string m = lower(head);
  std::vector<string_view> operands;
  if (!rest.empty() && !string_op(m)) operands = split_on(rest, ", ");
  size_t count = operands.size();
  Keys reads, writes, loads, stores;
  // deps._traits
  if (starts_any(m, kMulDiv) || (starts(m, "imul") && count == 1)) {
    reads.add("rax");
    if (starts(m, "div") || starts(m, "idiv")) reads.add("rdx");
    writes.add("rax");
    writes.add("rdx");
  } else if (m == "cqto" || m == "cltq" || m == "cwtl" || m == "cltd") {
    reads.add("rax");
    writes.add(m == "cqto" || m == "cltd" ? "rdx" : "rax");
  } else if (string_op(m)) {
    string_view stem = string_view(m).substr(0, 4);
    std::vector<string> pointers;
    if (stem == "stos" || stem == "scas")
      pointers = {"rdi"};
    else if (stem == "lods")
      pointers = {"rsi"};
    else
      pointers = {"rsi", "rdi"};
    for (auto& p : pointers) {
      reads.add(p);
      writes.add(p);
    }
    if (stem == "stos" || stem == "scas") reads.add("rax");
    if (stem == "lods") writes.add("rax");
    for (auto& p : pointers) {
      if (stem != "stos" && !(stem == "movs" && p == "rdi")) loads.add("(" + p + ")");
      if ((stem == "stos" || stem == "movs") && p == "rdi") stores.add("(" + p + ")");
    }
  } else if (starts(m, "push") || starts(m, "pop")) {
    reads.add("rsp");
    writes.add("rsp");
    (starts(m, "push") ? stores : loads).add("stack");
  }
  bool lea = starts(m, "lea");
  bool exchange = starts(m, "xchg") || starts(m, "xadd");
  bool sources_only = count == 1 && starts_any(m, kSourcesOnly);
  bool compare = starts_any(m, kCompares);
  bool write_only = starts_any(m, kWriteOnly) || (starts(m, "v") && count >= 3 && !starts_any(m, kVexReadsDest)) ||
                    (starts(m, "imul") && count == 3);
  bool zero_idiom_form = (count == 2 && starts_any(m, kZeroIdioms)) || (count == 3 && starts_any(m, kZeroIdioms3));
  bool flag_read = starts_any(m, kFlagReaders) || (starts(m, "j") && m != "jmp");
  bool flag_write = starts_any(m, kFlagWriters) && !starts(m, "cmov") && !starts(m, "mov");

  if (repeated) {
    reads.add("rcx");
    writes.add("rcx");
  }
  std::vector<Register> registers(count);
  std::vector<char> has_register(count, 0), has_address(count, 0);
  std::vector<Address> addresses(count);
  for (size_t k = 0; k < count; ++k) {  // deps._operand
    string_view op = operands[k];
    if (!op.empty() && op[0] == '%' && op.find(':') != string_view::npos) {
      has_address[k] = deps_address(op, addresses[k]);
    } else {
      if (!op.empty() && op[0] == '%') has_register[k] = deps_register(op, registers[k]);
      if (op.empty() || (op[0] != '%' && op[0] != '$')) has_address[k] = deps_address(op, addresses[k]);
    }
  }
  for (size_t k = 0; k < count; ++k)
    if (has_address[k])
      for (auto& r : addresses[k].reads) reads.add(r);
  size_t sources = count ? count - 1 : 0;
  long dest = count ? long(count) - 1 : -1;
  if (exchange) {
    sources = count;
    dest = -1;
    for (size_t k = 0; k < count; ++k) {
      if (has_register[k])
        writes.add(registers[k].family);
      else if (has_address[k])
        stores.add(addresses[k].expression);
    }
  }
  if (sources_only) {
    sources = count;
    dest = -1;
  }
  for (size_t k = 0; k < sources; ++k) {
    if (has_register[k])
      reads.add(registers[k].family);
    else if (has_address[k] && !lea)
      loads.add(addresses[k].expression);
  }
  if (dest >= 0) {
    bool zero_idiom = zero_idiom_form && operands[0] == operands[1];
    if (zero_idiom)
      for (size_t k = 0; k < count; ++k)
        if (has_register[k]) reads.remove(registers[k].family);
    bool reads_dest = (!write_only || compare) && !zero_idiom;
    if (has_register[dest]) {
      if (reads_dest || registers[dest].partial) reads.add(registers[dest].family);
      if (!compare) writes.add(registers[dest].family);
    } else if (has_address[dest]) {
      if (reads_dest) loads.add(addresses[dest].expression);
      if (!compare) stores.add(addresses[dest].expression);
    }
  }
  if (flag_read) reads.add("flags");
  if (flag_write) writes.add("flags");
  uses = reads.items;
  for (auto& a : loads.items) uses.push_back("@" + a);
  defs = writes.items;
  for (auto& a : stores.items) defs.push_back("@" + a);
}

// ---- the encoder ---------------------------------------------------------------------------

// Caches handed to one thread at a time: a call's thread takes one and gives it back when done, so
// concurrent calls (a service's threads) never share one and later calls find them warm.
template <typename T>
struct Pool {
  std::mutex mutex;
  std::vector<std::unique_ptr<T>> free;

  std::unique_ptr<T> checkout() {
    std::lock_guard<std::mutex> lock(mutex);
    if (free.empty()) return std::make_unique<T>();
    auto item = std::move(free.back());
    free.pop_back();
    return item;
  }
  void give_back(std::unique_ptr<T> item) {
    std::lock_guard<std::mutex> lock(mutex);
    free.push_back(std::move(item));
  }
};

struct Line {
  enum Kind : uint8_t { kSkip, kDefer, kInstruction } kind = kDefer;
  std::vector<int32_t> ids;   // instruction token ids (the row before its edge tokens)
  std::vector<int32_t> uses;  // interned keys; negative: memory (key -1 - id), else register
  std::vector<int32_t> defs;
};

struct State {  // a thread's caches: never shared by two threads at once
  std::unordered_map<string, Line> lines;
  std::unordered_map<string, int32_t> keys;
  std::vector<int32_t> current, last, stamp;  // per key, within one block
  int32_t block = 0;
  std::vector<string> scratch_tokens, scratch_uses, scratch_defs;
  string canonical;
};

struct Result {
  std::vector<int64_t> tokens, per_instruction, per_block;
  std::vector<uint8_t> status;  // per input block: 0 encoded here, 1 left to Python
};

struct Encoder {
  std::unordered_map<string, int32_t> vocab;
  int width, max_deps, positions, max_instructions;
  std::vector<int32_t> edge_offsets;  // per kind, as Tokenizer._edge_offsets
  Pool<State> states;

  int32_t intern(State& st, const string& key) {
    auto it = st.keys.find(key);
    if (it != st.keys.end()) return it->second;
    int32_t id = int32_t(st.keys.size());
    st.keys.emplace(key, id);
    return id;
  }

  const Line& line(State& st, string_view raw) {
    auto found = st.lines.find(string(raw));
    if (found != st.lines.end()) return found->second;
    Line out;
    size_t a = 0, b = raw.size();
    while (a < b && is_py_space((unsigned char)raw[a])) ++a;
    while (b > a && is_py_space((unsigned char)raw[b - 1])) --b;
    string_view text = raw.substr(a, b - a);
    if (text.empty()) {
      out.kind = Line::kSkip;
    } else if (acceptable(text) && normalize(text, st.canonical) && !is_prefix(st.canonical)) {
      out.kind = Line::kInstruction;
      st.scratch_tokens.clear();
      instruction_tokens(st.canonical, st.scratch_tokens);
      size_t n = std::min(st.scratch_tokens.size(), size_t(width));
      for (size_t i = 0; i < n; ++i) {
        auto id = vocab.find(st.scratch_tokens[i]);
        if (id == vocab.end()) {  // unseen (backoff or <UNK>), or a token Python's int() must read
          out.kind = Line::kDefer;
          break;
        }
        out.ids.push_back(id->second);
      }
      if (out.kind == Line::kInstruction && max_deps) {
        uses_defs(st.canonical, st.scratch_uses, st.scratch_defs);
        for (auto& k : st.scratch_uses) out.uses.push_back(k[0] == '@' ? -1 - intern(st, k) : intern(st, k));
        for (auto& k : st.scratch_defs) out.defs.push_back(k[0] == '@' ? -1 - intern(st, k) : intern(st, k));
      }
    }
    return st.lines.emplace(string(raw), std::move(out)).first->second;
  }

  // one block: appended to `out` and true, or false (left to Python; `out` unchanged)
  bool block(State& st, string_view text, Result& out, std::vector<const Line*>& rows) {
    // bounded, as the Python caches are; emptied between blocks only: `rows` points into it, and a
    // block's lines and keys must outlive the block (emptied mid-block, a long run of distinct lines
    // freed the rows of the block being read)
    if (st.lines.size() >= kLineCache) {
      st.lines.clear();
      st.keys.clear();  // no line holds a key any more
    }
    rows.clear();
    size_t start = 0;
    while (true) {
      size_t end = text.find('\n', start);
      string_view raw = text.substr(start, end == string_view::npos ? string_view::npos : end - start);
      const Line& l = line(st, raw);
      if (l.kind == Line::kDefer) return false;
      if (l.kind == Line::kInstruction) rows.push_back(&l);
      if (end == string_view::npos) break;
      start = end + 1;
    }
    if (rows.empty() || rows.size() > size_t(max_instructions)) return false;
    bool edges = max_deps && rows.size() <= size_t(positions);
    if (edges) {
      size_t keys = st.keys.size();
      if (st.stamp.size() < keys) {
        st.stamp.resize(keys, -1);
        st.current.resize(keys);
        st.last.resize(keys);
      }
      ++st.block;
      for (size_t j = 0; j < rows.size(); ++j)
        for (int32_t k : rows[j]->defs) {
          int32_t key = k < 0 ? -1 - k : k;
          if (st.stamp[key] != st.block) {
            st.stamp[key] = st.block;
            st.current[key] = -1;
          }
          st.last[key] = int32_t(j);
        }
    }
    std::vector<std::pair<int, int>> mine;
    for (size_t i = 0; i < rows.size(); ++i) {
      const Line& l = *rows[i];
      size_t before = out.tokens.size();
      for (int32_t id : l.ids) out.tokens.push_back(id);
      if (edges) {
        mine.clear();
        for (int32_t k : l.uses) {
          bool memory = k < 0;
          int32_t key = memory ? -1 - k : k;
          if (key >= int32_t(st.stamp.size()) || st.stamp[key] != st.block) continue;  // no writer in the block
          if (st.current[key] >= 0)
            mine.emplace_back(memory ? 2 : 0, st.current[key]);
          else
            mine.emplace_back(memory ? 3 : 1, st.last[key]);
        }
        if (mine.size() > 1) {
          std::sort(mine.begin(), mine.end());
          mine.erase(std::unique(mine.begin(), mine.end()), mine.end());
        }
        size_t most = std::min(mine.size(), size_t(max_deps));
        for (size_t e = 0; e < most; ++e) out.tokens.push_back(edge_offsets[mine[e].first] + mine[e].second);
        for (int32_t k : l.defs) st.current[k < 0 ? -1 - k : k] = int32_t(i);
      }
      out.per_instruction.push_back(int64_t(out.tokens.size() - before));
    }
    out.per_block.push_back(int64_t(rows.size()));
    return true;
  }

  void encode(const char* data, const int64_t* offsets, size_t n, Result& out) {
    auto st = states.checkout();
    std::vector<const Line*> rows;
    out.status.assign(n, 1);
    for (size_t b = 0; b < n; ++b) {
      string_view text(data + offsets[b], size_t(offsets[b + 1] - offsets[b]));
      out.status[b] = block(*st, text, out, rows) ? 0 : 1;
    }
    states.give_back(std::move(st));
  }
};

// ---- hex: LLVM's C disassembler, opened with dlopen -------------------------------------------

using CreateDisasm = void* (*)(const char*, void*, int, void*, void*);
using DisasmInstruction = size_t (*)(void*, uint8_t*, uint64_t, uint64_t, char*, size_t);
using DisasmDispose = void (*)(void*);
CreateDisasm create_disasm = nullptr;
DisasmInstruction disasm_instruction = nullptr;
DisasmDispose disasm_dispose = nullptr;

struct Disassembled {
  string text;                  // every block's canonical text, one after another
  std::vector<int64_t> offsets;  // where each starts (n + 1)
  std::vector<uint8_t> status;  // 0 text; 1 truncated; 2 invalid encoding; 3 left to Python
};

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// An instruction's canonical text by its bytes. x86 decoding reads an instruction's bytes left to
// right and stops where it ends, so bytes that once decoded as a whole instruction decode the same
// wherever they appear, and no other known instruction is a prefix of them: at a position, at most
// one of the lengths seen can match. The exception is a prefix LLVM prints as an instruction of its
// own (`rep` before `retq`, but not before `movsb`; `f3` before `0f b8` is part of `popcnt`): it
// decided so from the bytes after it, so a bare prefix is never kept. Real code repeats instructions far more than blocks, and
// LLVM's decoder and printer cost about 2 us an instruction; a lookup costs a few hash probes.
struct Decoded {
  std::unordered_map<string, string> text;  // bytes -> canonical text (never a bare prefix)
  uint32_t lengths = 0;                     // bit s: some key has s bytes
};

Pool<Decoded> decoded_pool;
constexpr size_t kDecodedCache = 1 << 17;

// blocks[b] of a hex string each (already checked as even-length hex): hexcode._in_process
void disassemble(const char* data, const int64_t* offsets, size_t n, Disassembled& out) {
  void* context = create_disasm("x86_64-unknown-linux-gnu", nullptr, 0, nullptr, nullptr);
  auto known = decoded_pool.checkout();
  std::vector<uint8_t> code;
  char printed[256];
  string canonical, block, key;
  std::vector<string> pending;
  out.offsets.assign(1, 0);
  out.status.assign(n, 0);
  for (size_t b = 0; b < n; ++b) {
    size_t length = size_t(offsets[b + 1] - offsets[b]) / 2;
    const char* hex = data + offsets[b];
    code.assign(length + 15, 0);  // zero padding past the end, as the Python side has
    for (size_t i = 0; i < length; ++i) code[i] = uint8_t(hex_value(hex[2 * i]) * 16 + hex_value(hex[2 * i + 1]));
    block.clear();
    pending.clear();
    uint8_t status = context ? 0 : 3;
    size_t position = 0;
    bool first = true;
    while (status == 0 && position < length) {
      const string* text = nullptr;
      size_t left = length - position;
      for (size_t size = 1; size <= std::min<size_t>(left, 15) && !text; ++size) {
        if (!(known->lengths >> size & 1)) continue;
        key.assign(reinterpret_cast<const char*>(code.data() + position), size);
        auto hit = known->text.find(key);
        if (hit != known->text.end()) {
          text = &hit->second;
          position += size;
        }
      }
      if (!text) {
        size_t size = disasm_instruction(context, code.data() + position, left, 0, printed, sizeof printed);
        if (size == 0) {
          size_t padded = disasm_instruction(context, code.data() + position, left + 15, 0, printed, sizeof printed);
          status = padded > left ? 1 : 2;
          break;
        }
        string_view raw(printed);
        raw = raw.substr(0, raw.find('#'));  // llvm-mc's "# imm = 0x.." notes
        if (split_ws(raw).empty() || !normalize(raw, canonical)) {
          status = 3;
          break;
        }
        if (known->text.size() >= kDecodedCache) {
          known->text.clear();
          known->lengths = 0;
        }
        position += size;
        if (is_prefix(canonical)) {
          pending.push_back(canonical);
          continue;
        }
        key.assign(reinterpret_cast<const char*>(code.data() + position - size), size);
        text = &known->text.emplace(key, canonical).first->second;
        known->lengths |= 1u << size;
      }
      if (!first) block += '\n';
      first = false;
      for (auto& p : pending) {
        block += p;
        block += ' ';
      }
      pending.clear();  // asm.join_prefixes: the prefixes before it joined to it
      block += *text;
    }
    if (status == 0 && !pending.empty()) status = 1;  // a prefix with nothing after it
    out.status[b] = status;
    if (status == 0) out.text += block;
    out.offsets.push_back(int64_t(out.text.size()));
  }
  decoded_pool.give_back(std::move(known));
  if (context) disasm_dispose(context);
}

// `threads` workers over contiguous slices of the blocks, results joined in order
template <typename Part, typename Work, typename Join>
void in_slices(size_t n, int threads, Work work, Join join) {
  size_t t = std::max<size_t>(1, std::min<size_t>(size_t(std::max(threads, 1)), n / 256 + 1));
  std::vector<Part> parts(t);
  std::vector<std::thread> running;
  size_t step = (n + t - 1) / t;
  for (size_t k = 0; k < t; ++k) {
    size_t from = std::min(n, k * step), to = std::min(n, from + step);
    if (k + 1 == t)
      work(from, to, parts[k]);
    else
      running.emplace_back([&, from, to, k] { work(from, to, parts[k]); });
  }
  for (auto& th : running) th.join();
  for (auto& p : parts) join(p);
}

}  // namespace

extern "C" {

// vocab: the tokens in id order, '\n' between them
void* fe_new(const char* vocab, int64_t length, int width, int max_deps, int positions, int max_instructions) {
  auto* e = new Encoder();
  string_view all(vocab, size_t(length));
  int32_t id = 0;
  for (string_view token : split_on(all, "\n")) e->vocab.emplace(string(token), id++);
  e->width = width;
  e->max_deps = max_deps;
  e->positions = positions;
  e->max_instructions = max_instructions;
  for (int k = 0; k < 4; ++k) e->edge_offsets.push_back(2 + k * positions);
  return e;
}

void fe_free(void* encoder) { delete static_cast<Encoder*>(encoder); }

// n blocks, block b at data[offsets[b]:offsets[b + 1]] (UTF-8)
void* fe_encode(void* encoder, const char* data, const int64_t* offsets, int64_t n, int threads) {
  auto* e = static_cast<Encoder*>(encoder);
  auto* out = new Result();
  in_slices<Result>(
      size_t(n), threads, [&](size_t from, size_t to, Result& part) { e->encode(data, offsets + from, to - from, part); },
      [&](Result& part) {
        out->tokens.insert(out->tokens.end(), part.tokens.begin(), part.tokens.end());
        out->per_instruction.insert(out->per_instruction.end(), part.per_instruction.begin(), part.per_instruction.end());
        out->per_block.insert(out->per_block.end(), part.per_block.begin(), part.per_block.end());
        out->status.insert(out->status.end(), part.status.begin(), part.status.end());
      });
  return out;
}

// sizes of a result: tokens, instructions, encoded blocks
void fe_sizes(void* result, int64_t* sizes) {
  auto* r = static_cast<Result*>(result);
  sizes[0] = int64_t(r->tokens.size());
  sizes[1] = int64_t(r->per_instruction.size());
  sizes[2] = int64_t(r->per_block.size());
}

void fe_take(void* result, int64_t* tokens, int64_t* per_instruction, int64_t* per_block, uint8_t* status) {
  auto* r = static_cast<Result*>(result);
  std::memcpy(tokens, r->tokens.data(), r->tokens.size() * sizeof(int64_t));
  std::memcpy(per_instruction, r->per_instruction.data(), r->per_instruction.size() * sizeof(int64_t));
  std::memcpy(per_block, r->per_block.data(), r->per_block.size() * sizeof(int64_t));
  std::memcpy(status, r->status.data(), r->status.size());
  delete r;
}

// the libLLVM whose C disassembler hex blocks go through: 0 when it loads
int fe_open_llvm(const char* path) {
  void* library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!library) return 1;
  for (const char* init : {"LLVMInitializeX86TargetInfo", "LLVMInitializeX86TargetMC", "LLVMInitializeX86Disassembler"}) {
    auto* f = reinterpret_cast<void (*)()>(dlsym(library, init));
    if (!f) return 2;
    f();
  }
  create_disasm = reinterpret_cast<CreateDisasm>(dlsym(library, "LLVMCreateDisasm"));
  disasm_instruction = reinterpret_cast<DisasmInstruction>(dlsym(library, "LLVMDisasmInstruction"));
  disasm_dispose = reinterpret_cast<DisasmDispose>(dlsym(library, "LLVMDisasmDispose"));
  return create_disasm && disasm_instruction && disasm_dispose ? 0 : 3;
}

void* fe_disassemble(const char* data, const int64_t* offsets, int64_t n, int threads) {
  auto* out = new Disassembled();
  out->offsets.assign(1, 0);
  in_slices<Disassembled>(
      size_t(n), threads, [&](size_t from, size_t to, Disassembled& part) { disassemble(data, offsets + from, to - from, part); },
      [&](Disassembled& part) {
        int64_t base = int64_t(out->text.size());
        out->text += part.text;
        for (size_t k = 1; k < part.offsets.size(); ++k) out->offsets.push_back(base + part.offsets[k]);
        out->status.insert(out->status.end(), part.status.begin(), part.status.end());
      });
  return out;
}

int64_t fe_text_size(void* disassembled) { return int64_t(static_cast<Disassembled*>(disassembled)->text.size()); }

void fe_text_take(void* disassembled, char* text, int64_t* offsets, uint8_t* status) {
  auto* d = static_cast<Disassembled*>(disassembled);
  std::memcpy(text, d->text.data(), d->text.size());
  std::memcpy(offsets, d->offsets.data(), d->offsets.size() * sizeof(int64_t));
  std::memcpy(status, d->status.data(), d->status.size());
  delete d;
}

}  // extern "C"
