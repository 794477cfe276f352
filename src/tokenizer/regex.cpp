#include "tokenizer/regex.h"

#include <fmt/format.h>

#include "tandem/check.h"
#include "tokenizer/unicode.h"

namespace tandem {
namespace {

constexpr uint32_t kWhitespaceBit = 1u << 30;
constexpr uint32_t Bit(unicode::Category c) { return 1u << c; }
constexpr uint32_t kLetterMask = Bit(unicode::kLu) | Bit(unicode::kLl) | Bit(unicode::kLt) |
                                 Bit(unicode::kLm) | Bit(unicode::kLo);
constexpr uint32_t kMarkMask = Bit(unicode::kMn) | Bit(unicode::kMc) | Bit(unicode::kMe);
constexpr uint32_t kNumberMask = Bit(unicode::kNd) | Bit(unicode::kNl) | Bit(unicode::kNo);
constexpr uint32_t kPunctMask = Bit(unicode::kPc) | Bit(unicode::kPd) | Bit(unicode::kPs) |
                                Bit(unicode::kPe) | Bit(unicode::kPi) | Bit(unicode::kPf) |
                                Bit(unicode::kPo);
constexpr uint32_t kSymbolMask =
    Bit(unicode::kSm) | Bit(unicode::kSc) | Bit(unicode::kSk) | Bit(unicode::kSo);
constexpr uint32_t kSeparatorMask = Bit(unicode::kZs) | Bit(unicode::kZl) | Bit(unicode::kZp);
constexpr uint32_t kOtherMask = Bit(unicode::kCn) | Bit(unicode::kCc) | Bit(unicode::kCf) |
                                Bit(unicode::kCs) | Bit(unicode::kCo);
constexpr uint32_t kWordMask = kLetterMask | kMarkMask | Bit(unicode::kNd) | Bit(unicode::kPc);

uint32_t PropsOf(uint32_t cp) {
  uint32_t p = 1u << unicode::GetCategory(cp);
  if (unicode::IsWhitespace(cp)) p |= kWhitespaceBit;
  return p;
}

struct AsciiProps {
  uint32_t props[128];
  AsciiProps() {
    for (uint32_t c = 0; c < 128; ++c) props[c] = PropsOf(c);
  }
};

// A set of code points: the union of property items and ranges, optionally negated.
struct CharClass {
  uint32_t mask = 0;                  // union of props bits
  std::vector<uint32_t> neg_masks;    // items "not any of these props" (\S, \P{L} in a class)
  std::vector<std::pair<uint32_t, uint32_t>> ranges;  // inclusive
  bool negated = false;

  bool Contains(uint32_t cp, uint32_t props) const {
    bool in = (props & mask) != 0;
    if (!in) {
      for (const auto& [lo, hi] : ranges) {
        if (cp >= lo && cp <= hi) {
          in = true;
          break;
        }
      }
    }
    if (!in) {
      for (uint32_t m : neg_masks) {
        if ((props & m) == 0) {
          in = true;
          break;
        }
      }
    }
    return in != negated;
  }
};

enum class Op : uint8_t { kClass, kSplit, kJmp, kMatch, kRepeatClass, kLook, kAtomic, kBol, kEol };
enum class RepeatMode : uint8_t { kGreedy, kLazy, kPossessive };

struct Inst {
  Op op;
  bool negative = false;       // kLook
  RepeatMode mode = RepeatMode::kGreedy;
  int32_t x = 0, y = 0;        // jump targets / sub-program start
  int32_t cls = 0;             // class index
  uint32_t min = 0, max = 0;   // kRepeatClass
};

// ---- AST ------------------------------------------------------------------------------------
enum class NodeKind { kEmpty, kClass, kConcat, kAlt, kRepeat, kLook, kAtomic, kBol, kEol };
struct Node {
  NodeKind kind = NodeKind::kEmpty;
  int cls = -1;
  std::vector<std::unique_ptr<Node>> children;
  uint32_t min = 0, max = 0;  // max == kInfinite for unbounded
  RepeatMode mode = RepeatMode::kGreedy;
  bool negative = false;
};
constexpr uint32_t kInfinite = UINT32_MAX;

class Parser {
 public:
  Parser(std::string_view pattern, std::vector<CharClass>* classes) : classes_(classes) {
    for (size_t pos = 0; pos < pattern.size();) cps_.push_back(unicode::DecodeUtf8(pattern, &pos));
  }

  StatusOr<std::unique_ptr<Node>> Parse() {
    auto node = ParseAlt(false);
    if (!error_.empty()) return InvalidArgumentError(error_);
    if (pos_ != cps_.size()) return InvalidArgumentError(fmt::format("unbalanced ')' at {}", pos_));
    return node;
  }

 private:
  bool AtEnd() const { return pos_ >= cps_.size(); }
  uint32_t Peek() const { return cps_[pos_]; }
  void Fail(std::string msg) {
    if (error_.empty()) error_ = fmt::format("{} (at code point {})", msg, pos_);
    pos_ = cps_.size();
  }

  std::unique_ptr<Node> ParseAlt(bool case_insensitive) {
    bool ci = case_insensitive;
    auto alt = std::make_unique<Node>();
    alt->kind = NodeKind::kAlt;
    alt->children.push_back(ParseConcat(&ci));
    while (!AtEnd() && Peek() == '|') {
      ++pos_;
      alt->children.push_back(ParseConcat(&ci));
    }
    if (alt->children.size() == 1) return std::move(alt->children[0]);
    return alt;
  }

  std::unique_ptr<Node> ParseConcat(bool* ci) {
    auto cat = std::make_unique<Node>();
    cat->kind = NodeKind::kConcat;
    while (!AtEnd() && Peek() != '|' && Peek() != ')') {
      auto atom = ParseAtom(ci);
      if (!atom) continue;  // inline flag group
      atom = ParseQuantifier(std::move(atom));
      cat->children.push_back(std::move(atom));
    }
    return cat;
  }

  std::unique_ptr<Node> ParseQuantifier(std::unique_ptr<Node> atom) {
    while (!AtEnd()) {
      uint32_t c = Peek();
      uint32_t min, max;
      if (c == '*') {
        min = 0, max = kInfinite;
        ++pos_;
      } else if (c == '+') {
        min = 1, max = kInfinite;
        ++pos_;
      } else if (c == '?') {
        min = 0, max = 1;
        ++pos_;
      } else if (c == '{') {
        size_t save = pos_;
        ++pos_;
        auto read_int = [&](uint32_t* v) {
          bool any = false;
          *v = 0;
          while (!AtEnd() && Peek() >= '0' && Peek() <= '9') {
            *v = *v * 10 + (Peek() - '0');
            ++pos_;
            any = true;
          }
          return any;
        };
        if (!read_int(&min)) {
          pos_ = save;  // a literal '{'
          return atom;
        }
        max = min;
        if (!AtEnd() && Peek() == ',') {
          ++pos_;
          if (!read_int(&max)) max = kInfinite;
        }
        if (AtEnd() || Peek() != '}') {
          pos_ = save;
          return atom;
        }
        ++pos_;
      } else {
        return atom;
      }
      auto rep = std::make_unique<Node>();
      rep->kind = NodeKind::kRepeat;
      rep->min = min;
      rep->max = max;
      if (!AtEnd() && Peek() == '?') {
        rep->mode = RepeatMode::kLazy;
        ++pos_;
      } else if (!AtEnd() && Peek() == '+') {
        rep->mode = RepeatMode::kPossessive;
        ++pos_;
      }
      rep->children.push_back(std::move(atom));
      atom = std::move(rep);
    }
    return atom;
  }

  std::unique_ptr<Node> ClassNode(CharClass cls) {
    classes_->push_back(std::move(cls));
    auto node = std::make_unique<Node>();
    node->kind = NodeKind::kClass;
    node->cls = static_cast<int>(classes_->size() - 1);
    return node;
  }

  static void AddCaseVariants(CharClass* cls) {
    std::vector<std::pair<uint32_t, uint32_t>> extra;
    for (const auto& [lo, hi] : cls->ranges) {
      for (uint32_t c = lo; c <= hi && c < 0x80; ++c) {
        if (c >= 'a' && c <= 'z') extra.emplace_back(c - 32, c - 32);
        if (c >= 'A' && c <= 'Z') extra.emplace_back(c + 32, c + 32);
        // Unicode simple case folding maps these onto ASCII letters.
        if (c == 's' || c == 'S') extra.emplace_back(0x17F, 0x17F);
        if (c == 'k' || c == 'K') extra.emplace_back(0x212A, 0x212A);
      }
    }
    cls->ranges.insert(cls->ranges.end(), extra.begin(), extra.end());
  }

  // Parses \p{Name} / \P{Name} after the 'p' or 'P'; returns the props mask.
  bool ParseProperty(uint32_t* mask, bool* negated) {
    if (AtEnd() || Peek() != '{') {
      Fail("expected '{' after \\p");
      return false;
    }
    ++pos_;
    std::string name;
    while (!AtEnd() && Peek() != '}') name.push_back(static_cast<char>(cps_[pos_++]));
    if (AtEnd()) {
      Fail("unterminated \\p{");
      return false;
    }
    ++pos_;
    if (!name.empty() && name[0] == '^') {
      *negated = !*negated;
      name.erase(0, 1);
    }
    static const std::pair<const char*, uint32_t> kNames[] = {
        {"L", kLetterMask}, {"Letter", kLetterMask}, {"M", kMarkMask}, {"Mark", kMarkMask},
        {"N", kNumberMask}, {"Number", kNumberMask}, {"P", kPunctMask},
        {"Punctuation", kPunctMask}, {"S", kSymbolMask}, {"Symbol", kSymbolMask},
        {"Z", kSeparatorMask}, {"Separator", kSeparatorMask}, {"C", kOtherMask},
        {"Other", kOtherMask}, {"LC", Bit(unicode::kLu) | Bit(unicode::kLl) | Bit(unicode::kLt)},
        {"L&", Bit(unicode::kLu) | Bit(unicode::kLl) | Bit(unicode::kLt)},
        {"Cn", Bit(unicode::kCn)}, {"Lu", Bit(unicode::kLu)}, {"Ll", Bit(unicode::kLl)},
        {"Lt", Bit(unicode::kLt)}, {"Lm", Bit(unicode::kLm)}, {"Lo", Bit(unicode::kLo)},
        {"Mn", Bit(unicode::kMn)}, {"Mc", Bit(unicode::kMc)}, {"Me", Bit(unicode::kMe)},
        {"Nd", Bit(unicode::kNd)}, {"Nl", Bit(unicode::kNl)}, {"No", Bit(unicode::kNo)},
        {"Pc", Bit(unicode::kPc)}, {"Pd", Bit(unicode::kPd)}, {"Ps", Bit(unicode::kPs)},
        {"Pe", Bit(unicode::kPe)}, {"Pi", Bit(unicode::kPi)}, {"Pf", Bit(unicode::kPf)},
        {"Po", Bit(unicode::kPo)}, {"Sm", Bit(unicode::kSm)}, {"Sc", Bit(unicode::kSc)},
        {"Sk", Bit(unicode::kSk)}, {"So", Bit(unicode::kSo)}, {"Zs", Bit(unicode::kZs)},
        {"Zl", Bit(unicode::kZl)}, {"Zp", Bit(unicode::kZp)}, {"Cc", Bit(unicode::kCc)},
        {"Cf", Bit(unicode::kCf)}, {"Cs", Bit(unicode::kCs)}, {"Co", Bit(unicode::kCo)},
    };
    for (const auto& [n, m] : kNames) {
      if (name == n) {
        *mask = m;
        return true;
      }
    }
    Fail(fmt::format("unsupported Unicode property \\p{{{}}}", name));
    return false;
  }

  uint32_t ParseHex(size_t max_digits, bool braced) {
    uint32_t v = 0;
    size_t n = 0;
    while (!AtEnd() && (braced || n < max_digits)) {
      uint32_t c = Peek();
      int d = (c >= '0' && c <= '9') ? int(c - '0')
              : (c >= 'a' && c <= 'f') ? int(c - 'a' + 10)
              : (c >= 'A' && c <= 'F') ? int(c - 'A' + 10)
                                       : -1;
      if (d < 0) break;
      v = v * 16 + d;
      ++pos_;
      ++n;
    }
    return v;
  }

  // Parses an escape (after '\'). Adds to `cls`; returns false on error.
  bool ParseEscapeInto(CharClass* cls, bool* single, uint32_t* literal) {
    *single = false;
    if (AtEnd()) {
      Fail("trailing backslash");
      return false;
    }
    uint32_t c = cps_[pos_++];
    auto lit = [&](uint32_t v) {
      *single = true;
      *literal = v;
      cls->ranges.emplace_back(v, v);
      return true;
    };
    switch (c) {
      case 'n': return lit('\n');
      case 'r': return lit('\r');
      case 't': return lit('\t');
      case 'f': return lit('\f');
      case 'v': return lit('\v');
      case 'a': return lit('\a');
      case 'e': return lit(0x1B);
      case '0': return lit(0);
      case 'x':
        if (!AtEnd() && Peek() == '{') {
          ++pos_;
          uint32_t v = ParseHex(8, true);
          if (AtEnd() || Peek() != '}') {
            Fail("unterminated \\x{");
            return false;
          }
          ++pos_;
          return lit(v);
        }
        return lit(ParseHex(2, false));
      case 'u': return lit(ParseHex(4, false));
      case 's': cls->mask |= kWhitespaceBit; return true;
      case 'S': cls->neg_masks.push_back(kWhitespaceBit); return true;
      case 'd': cls->mask |= Bit(unicode::kNd); return true;
      case 'D': cls->neg_masks.push_back(Bit(unicode::kNd)); return true;
      case 'w': cls->mask |= kWordMask; return true;
      case 'W': cls->neg_masks.push_back(kWordMask); return true;
      case 'p':
      case 'P': {
        bool neg = c == 'P';
        uint32_t mask = 0;
        if (!ParseProperty(&mask, &neg)) return false;
        if (neg) {
          cls->neg_masks.push_back(mask);
        } else {
          cls->mask |= mask;
        }
        return true;
      }
      default:
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
          Fail(fmt::format("unsupported escape \\{}", static_cast<char>(c)));
          return false;
        }
        return lit(c);
    }
  }

  std::unique_ptr<Node> ParseBracket(bool ci) {
    CharClass cls;
    if (!AtEnd() && Peek() == '^') {
      cls.negated = true;
      ++pos_;
    }
    bool first = true;
    while (!AtEnd() && (Peek() != ']' || first)) {
      first = false;
      uint32_t lo;
      bool single = true;
      if (Peek() == '[') {
        Fail("nested character classes are not supported");
        return nullptr;
      }
      if (Peek() == '\\') {
        ++pos_;
        CharClass tmp;
        if (!ParseEscapeInto(&tmp, &single, &lo)) return nullptr;
        if (!single) {
          cls.mask |= tmp.mask;
          cls.neg_masks.insert(cls.neg_masks.end(), tmp.neg_masks.begin(), tmp.neg_masks.end());
          continue;
        }
      } else {
        lo = cps_[pos_++];
      }
      uint32_t hi = lo;
      if (pos_ + 1 < cps_.size() && Peek() == '-' && cps_[pos_ + 1] != ']') {
        ++pos_;
        if (Peek() == '\\') {
          ++pos_;
          CharClass tmp;
          bool s2;
          if (!ParseEscapeInto(&tmp, &s2, &hi)) return nullptr;
          if (!s2) {
            Fail("bad range end in character class");
            return nullptr;
          }
        } else {
          hi = cps_[pos_++];
        }
      }
      cls.ranges.emplace_back(lo, hi);
    }
    if (AtEnd()) {
      Fail("unterminated character class");
      return nullptr;
    }
    ++pos_;  // ']'
    if (ci) AddCaseVariants(&cls);
    return ClassNode(std::move(cls));
  }

  std::unique_ptr<Node> ParseAtom(bool* ci) {
    uint32_t c = cps_[pos_++];
    switch (c) {
      case '(': {
        auto group = std::make_unique<Node>();
        bool inner_ci = *ci;
        NodeKind kind = NodeKind::kConcat;
        bool negative = false;
        if (!AtEnd() && Peek() == '?') {
          ++pos_;
          if (AtEnd()) {
            Fail("bad group");
            return nullptr;
          }
          uint32_t k = cps_[pos_++];
          if (k == ':') {
          } else if (k == '=' || k == '!') {
            kind = NodeKind::kLook;
            negative = k == '!';
          } else if (k == '>') {
            kind = NodeKind::kAtomic;
          } else if (k == 'i' || k == '-') {
            bool on = k == 'i';
            if (k == '-') {
              if (AtEnd() || Peek() != 'i') {
                Fail("unsupported inline flag");
                return nullptr;
              }
              ++pos_;
            }
            if (!AtEnd() && Peek() == ')') {  // (?i) applies to the rest of the group
              ++pos_;
              *ci = on;
              return nullptr;
            }
            if (AtEnd() || Peek() != ':') {
              Fail("unsupported inline flag");
              return nullptr;
            }
            ++pos_;
            inner_ci = on;
          } else {
            Fail("unsupported group syntax (?" + std::string(1, static_cast<char>(k)));
            return nullptr;
          }
        }
        auto body = ParseAlt(inner_ci);
        if (AtEnd() || Peek() != ')') {
          Fail("missing ')'");
          return nullptr;
        }
        ++pos_;
        if (kind == NodeKind::kConcat) return body;
        group->kind = kind;
        group->negative = negative;
        group->children.push_back(std::move(body));
        return group;
      }
      case '[': return ParseBracket(*ci);
      case '.': {
        CharClass cls;
        cls.negated = true;
        cls.ranges.emplace_back('\n', '\n');
        return ClassNode(std::move(cls));
      }
      case '^': {
        auto n = std::make_unique<Node>();
        n->kind = NodeKind::kBol;
        return n;
      }
      case '$': {
        auto n = std::make_unique<Node>();
        n->kind = NodeKind::kEol;
        return n;
      }
      case '\\': {
        CharClass cls;
        bool single;
        uint32_t lit;
        if (!ParseEscapeInto(&cls, &single, &lit)) return nullptr;
        if (*ci) AddCaseVariants(&cls);
        return ClassNode(std::move(cls));
      }
      case '*':
      case '+':
      case '?':
        Fail("quantifier without operand");
        return nullptr;
      default: {
        CharClass cls;
        cls.ranges.emplace_back(c, c);
        if (*ci) AddCaseVariants(&cls);
        return ClassNode(std::move(cls));
      }
    }
  }

  std::vector<uint32_t> cps_;
  size_t pos_ = 0;
  std::vector<CharClass>* classes_;
  std::string error_;
};

}  // namespace

struct Regex::Program {
  std::vector<CharClass> classes;
  std::vector<Inst> insts;
  int32_t start = 0;

  int32_t Emit(Inst inst) {
    insts.push_back(inst);
    return static_cast<int32_t>(insts.size() - 1);
  }

  void Compile(const Node& node) {
    switch (node.kind) {
      case NodeKind::kEmpty: return;
      case NodeKind::kClass: Emit({.op = Op::kClass, .cls = node.cls}); return;
      case NodeKind::kBol: Emit({.op = Op::kBol}); return;
      case NodeKind::kEol: Emit({.op = Op::kEol}); return;
      case NodeKind::kConcat:
        for (const auto& child : node.children) Compile(*child);
        return;
      case NodeKind::kAlt: {
        std::vector<int32_t> jumps;
        for (size_t i = 0; i < node.children.size(); ++i) {
          int32_t split = -1;
          if (i + 1 < node.children.size()) split = Emit({.op = Op::kSplit});
          if (split >= 0) insts[split].x = split + 1;
          Compile(*node.children[i]);
          if (i + 1 < node.children.size()) {
            jumps.push_back(Emit({.op = Op::kJmp}));
            insts[split].y = static_cast<int32_t>(insts.size());
          }
        }
        for (int32_t j : jumps) insts[j].x = static_cast<int32_t>(insts.size());
        return;
      }
      case NodeKind::kLook:
      case NodeKind::kAtomic: {
        int32_t at = Emit({.op = node.kind == NodeKind::kLook ? Op::kLook : Op::kAtomic,
                           .negative = node.negative});
        int32_t skip = Emit({.op = Op::kJmp});
        insts[at].x = static_cast<int32_t>(insts.size());
        Compile(*node.children[0]);
        Emit({.op = Op::kMatch});
        insts[skip].x = static_cast<int32_t>(insts.size());
        // Layout: [look/atomic][jmp over sub][sub...][match] <- continue here.
        insts[at].y = static_cast<int32_t>(insts.size());
        return;
      }
      case NodeKind::kRepeat: {
        const Node& child = *node.children[0];
        if (node.mode == RepeatMode::kPossessive) {
          if (child.kind == NodeKind::kClass) {
            Emit({.op = Op::kRepeatClass, .mode = RepeatMode::kPossessive, .cls = child.cls,
                  .min = node.min, .max = node.max});
            return;
          }
          int32_t at = Emit({.op = Op::kAtomic});
          int32_t skip = Emit({.op = Op::kJmp});
          insts[at].x = static_cast<int32_t>(insts.size());
          CompileRepeat(child, node.min, node.max, RepeatMode::kGreedy);
          Emit({.op = Op::kMatch});
          insts[skip].x = static_cast<int32_t>(insts.size());
          insts[at].y = static_cast<int32_t>(insts.size());
          return;
        }
        if (child.kind == NodeKind::kClass && node.mode == RepeatMode::kGreedy) {
          Emit({.op = Op::kRepeatClass, .mode = RepeatMode::kGreedy, .cls = child.cls,
                .min = node.min, .max = node.max});
          return;
        }
        CompileRepeat(child, node.min, node.max, node.mode);
        return;
      }
    }
  }

  void CompileRepeat(const Node& child, uint32_t min, uint32_t max, RepeatMode mode) {
    for (uint32_t i = 0; i < min; ++i) Compile(child);
    const bool lazy = mode == RepeatMode::kLazy;
    if (max == kInfinite) {
      int32_t loop = Emit({.op = Op::kSplit});
      Compile(child);
      Emit({.op = Op::kJmp, .x = loop});
      int32_t out = static_cast<int32_t>(insts.size());
      insts[loop].x = lazy ? out : loop + 1;
      insts[loop].y = lazy ? loop + 1 : out;
      return;
    }
    std::vector<int32_t> splits;
    for (uint32_t i = min; i < max; ++i) {
      int32_t s = Emit({.op = Op::kSplit});
      splits.push_back(s);
      Compile(child);
      insts[s].x = s + 1;
    }
    int32_t out = static_cast<int32_t>(insts.size());
    for (int32_t s : splits) {
      insts[s].y = out;
      if (lazy) std::swap(insts[s].x, insts[s].y);
    }
  }

  struct Frame {
    int32_t pc;
    int32_t pos;
    int32_t lo;  // >= 0: a greedy class repeat that can still give back down to lo
  };

  // Runs from (pc, pos); returns the end position of the first match, or -1.
  int32_t Exec(int32_t pc, int32_t pos, const Utf8Text& text, std::vector<Frame>& stack) const {
    const size_t base = stack.size();
    const int32_t n = static_cast<int32_t>(text.size());
    while (true) {
      const Inst& in = insts[pc];
      bool ok = true;
      switch (in.op) {
        case Op::kClass:
          if (pos < n && classes[in.cls].Contains(text.cps[pos], text.props[pos])) {
            ++pos;
            ++pc;
          } else {
            ok = false;
          }
          break;
        case Op::kSplit:
          stack.push_back({in.y, pos, -1});
          pc = in.x;
          break;
        case Op::kJmp: pc = in.x; break;
        case Op::kMatch: stack.resize(base); return pos;
        case Op::kBol: ok = pos == 0; ++pc; break;
        case Op::kEol: ok = pos == n || text.cps[pos] == '\n'; ++pc; break;
        case Op::kRepeatClass: {
          const CharClass& cls = classes[in.cls];
          int32_t limit = in.max == kInfinite ? n : std::min<int64_t>(n, int64_t(pos) + in.max);
          int32_t end = pos;
          while (end < limit && cls.Contains(text.cps[end], text.props[end])) ++end;
          if (end - pos < static_cast<int32_t>(in.min)) {
            ok = false;
            break;
          }
          int32_t lo = pos + static_cast<int32_t>(in.min);
          if (in.mode == RepeatMode::kGreedy && end > lo) stack.push_back({pc + 1, end, lo});
          pos = end;
          ++pc;
          break;
        }
        case Op::kLook: {
          int32_t r = Exec(in.x, pos, text, stack);
          ok = (r >= 0) != in.negative;
          pc = in.y;
          break;
        }
        case Op::kAtomic: {
          int32_t r = Exec(in.x, pos, text, stack);
          if (r < 0) {
            ok = false;
          } else {
            pos = r;
            pc = in.y;
          }
          break;
        }
      }
      if (ok) continue;
      // Backtrack.
      if (stack.size() == base) return -1;
      Frame f = stack.back();
      stack.pop_back();
      if (f.lo >= 0) {
        int32_t p = f.pos - 1;
        if (p > f.lo) stack.push_back({f.pc, p, f.lo});
        pc = f.pc;
        pos = p;
      } else {
        pc = f.pc;
        pos = f.pos;
      }
    }
  }
};

void Utf8Text::Assign(std::string_view text) {
  static const AsciiProps kAscii;  // constant after first use
  cps.clear();
  props.clear();
  offsets.clear();
  cps.reserve(text.size());
  props.reserve(text.size());
  offsets.reserve(text.size() + 1);
  for (size_t pos = 0; pos < text.size();) {
    offsets.push_back(static_cast<uint32_t>(pos));
    const auto b = static_cast<uint8_t>(text[pos]);
    if (b < 0x80) {
      cps.push_back(b);
      props.push_back(kAscii.props[b]);
      ++pos;
      continue;
    }
    uint32_t cp = unicode::DecodeUtf8(text, &pos);
    cps.push_back(cp);
    props.push_back(PropsOf(cp));
  }
  offsets.push_back(static_cast<uint32_t>(text.size()));
}

Regex::~Regex() = default;

StatusOr<std::unique_ptr<Regex>> Regex::Compile(std::string_view pattern) {
  auto program = std::make_unique<Program>();
  Parser parser(pattern, &program->classes);
  auto ast = parser.Parse();
  if (!ast.ok()) {
    return InvalidArgumentError(
        fmt::format("regex '{}': {}", pattern, ast.status().message()));
  }
  program->Compile(**ast);
  program->Emit({.op = Op::kMatch});
  std::unique_ptr<Regex> regex(new Regex());
  regex->pattern_ = std::string(pattern);
  regex->program_ = std::move(program);
  return regex;
}

void Regex::FindAll(const Utf8Text& text,
                    std::vector<std::pair<uint32_t, uint32_t>>* matches) const {
  std::vector<Program::Frame> stack;
  const int32_t n = static_cast<int32_t>(text.size());
  int32_t pos = 0;
  while (pos < n) {
    int32_t end = program_->Exec(program_->start, pos, text, stack);
    if (end > pos) {
      matches->emplace_back(pos, end);
      pos = end;
    } else {
      ++pos;
    }
  }
}

}  // namespace tandem
