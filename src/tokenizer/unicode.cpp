#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>
#include <memory>
#include <unordered_map>
#include <vector>

namespace tandem::unicode {
namespace {

#include "tokenizer/unicode_tables.inc"

constexpr uint32_t kMaxCodePoint = 0x10FFFF;

// Two-stage lookup (code point >> 8 -> block of 256 values) built from a run table.
class StagedTable {
 public:
  template <size_t N>
  StagedTable(const uint32_t (&runs)[N], int value_bits) {
    const uint32_t mask = (1u << value_bits) - 1;
    std::vector<uint8_t> flat(kMaxCodePoint + 1);
    for (size_t i = 0; i < N; ++i) {
      uint32_t start = runs[i] >> value_bits;
      uint32_t end = i + 1 < N ? runs[i + 1] >> value_bits : kMaxCodePoint + 1;
      std::fill(flat.begin() + start, flat.begin() + end, static_cast<uint8_t>(runs[i] & mask));
    }
    std::unordered_map<std::string, uint16_t> seen;
    stage1_.resize((kMaxCodePoint + 1) >> 8);
    for (size_t b = 0; b < stage1_.size(); ++b) {
      std::string block(reinterpret_cast<const char*>(flat.data() + (b << 8)), 256);
      auto [it, inserted] = seen.emplace(block, static_cast<uint16_t>(blocks_.size() >> 8));
      if (inserted) blocks_.insert(blocks_.end(), block.begin(), block.end());
      stage1_[b] = it->second;
    }
  }
  uint8_t Get(uint32_t cp) const {
    if (cp > kMaxCodePoint) return 0;
    return blocks_[(static_cast<size_t>(stage1_[cp >> 8]) << 8) | (cp & 0xFF)];
  }

 private:
  std::vector<uint16_t> stage1_;
  std::vector<uint8_t> blocks_;
};

const StagedTable& CategoryTable() {
  static const StagedTable table(kCategoryRuns, 5);
  return table;
}
const StagedTable& CombiningTable() {
  static const StagedTable table(kCombiningRuns, 8);
  return table;
}

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

const DecompositionEntry* FindDecomposition(uint32_t cp) {
  auto it = std::lower_bound(std::begin(kDecompositions), std::end(kDecompositions), cp,
                             [](const DecompositionEntry& e, uint32_t c) { return e.code_point < c; });
  if (it == std::end(kDecompositions) || it->code_point != cp) return nullptr;
  return &*it;
}

void Decompose(uint32_t cp, bool compat, std::vector<uint32_t>* out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    uint32_t s = cp - kSBase;
    out->push_back(kLBase + s / kNCount);
    out->push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out->push_back(kTBase + s % kTCount);
    return;
  }
  const DecompositionEntry* e = cp < 0xA0 ? nullptr : FindDecomposition(cp);
  if (e == nullptr || (e->compat && !compat)) {
    out->push_back(cp);
    return;
  }
  for (int i = 0; i < e->length; ++i) Decompose(kDecompositionData[e->offset + i], compat, out);
}

uint32_t Compose(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount) {
    return a + (b - kTBase);
  }
  auto it = std::lower_bound(std::begin(kCompositions), std::end(kCompositions), std::make_pair(a, b),
                             [](const CompositionEntry& e, const std::pair<uint32_t, uint32_t>& k) {
                               return e.first != k.first ? e.first < k.first : e.second < k.second;
                             });
  if (it != std::end(kCompositions) && it->first == a && it->second == b) return it->composite;
  return 0;
}

}  // namespace

Category GetCategory(uint32_t cp) { return static_cast<Category>(CategoryTable().Get(cp)); }

bool IsWhitespace(uint32_t cp) {
  if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

bool IsLetter(uint32_t cp) {
  Category c = GetCategory(cp);
  return c >= kLu && c <= kLo;
}
bool IsNumber(uint32_t cp) {
  Category c = GetCategory(cp);
  return c >= kNd && c <= kNo;
}
bool IsAlphanumeric(uint32_t cp) {
  Category c = GetCategory(cp);
  return (c >= kLu && c <= kLo) || (c >= kNd && c <= kNo);
}
uint8_t CombiningClass(uint32_t cp) { return cp < 0x300 ? 0 : CombiningTable().Get(cp); }

size_t Utf8SubpartLength(std::string_view s, size_t pos, bool* complete) {
  *complete = false;
  const auto b0 = static_cast<uint8_t>(s[pos]);
  if (b0 < 0x80) {
    *complete = true;
    return 1;
  }
  size_t need;
  uint8_t lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  size_t len = 1;
  while (len < need && pos + len < s.size()) {
    const auto b = static_cast<uint8_t>(s[pos + len]);
    if (b < lo || b > hi) break;
    lo = 0x80;
    hi = 0xBF;
    ++len;
  }
  *complete = len == need;
  return len;
}

uint32_t DecodeUtf8(std::string_view s, size_t* pos) {
  const auto b0 = static_cast<uint8_t>(s[*pos]);
  if (b0 < 0x80) {
    ++*pos;
    return b0;
  }
  bool complete;
  size_t len = Utf8SubpartLength(s, *pos, &complete);
  if (!complete) {
    ++*pos;
    return kReplacementChar;
  }
  uint32_t cp = len == 2 ? (b0 & 0x1F) : len == 3 ? (b0 & 0x0F) : (b0 & 0x07);
  for (size_t i = 1; i < len; ++i) cp = (cp << 6) | (static_cast<uint8_t>(s[*pos + i]) & 0x3F);
  *pos += len;
  return cp;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    if (static_cast<uint8_t>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    bool complete;
    size_t len = Utf8SubpartLength(s, i, &complete);
    if (!complete) return false;
    i += len;
  }
  return true;
}

std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    if (static_cast<uint8_t>(bytes[i]) < 0x80) {
      out.push_back(bytes[i++]);
      continue;
    }
    bool complete;
    size_t len = Utf8SubpartLength(bytes, i, &complete);
    if (complete) {
      out.append(bytes.substr(i, len));
      i += len;
    } else {
      AppendUtf8(kReplacementChar, &out);
      i += std::max<size_t>(len, 1);
    }
  }
  return out;
}

std::string Normalize(std::string_view text, NormalizationForm form) {
  bool simple = true;
  for (char c : text) {
    if (static_cast<uint8_t>(c) >= 0x80) {
      simple = false;
      break;
    }
  }
  if (simple) return std::string(text);
  const bool compat = form == NormalizationForm::kNfkc || form == NormalizationForm::kNfkd;
  const bool compose = form == NormalizationForm::kNfc || form == NormalizationForm::kNfkc;
  std::vector<uint32_t> cps;
  cps.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) Decompose(DecodeUtf8(text, &pos), compat, &cps);
  // Canonical ordering: stable sort each run of non-starters by combining class.
  for (size_t i = 0; i < cps.size();) {
    if (CombiningClass(cps[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && CombiningClass(cps[j]) != 0) ++j;
    std::stable_sort(cps.begin() + i, cps.begin() + j,
                     [](uint32_t a, uint32_t b) { return CombiningClass(a) < CombiningClass(b); });
    i = j;
  }
  if (compose && !cps.empty()) {
    std::vector<uint32_t> out;
    out.reserve(cps.size());
    size_t starter = SIZE_MAX;
    int last_class = 0;  // class of the last character kept after the starter
    for (uint32_t cp : cps) {
      const int cls = CombiningClass(cp);
      if (starter != SIZE_MAX) {
        // Blocked when something sits between the starter and cp whose class is 0 or >= cp's.
        const bool adjacent = out.size() == starter + 1;
        if (adjacent || last_class < cls) {
          uint32_t composite = Compose(out[starter], cp);
          if (composite != 0) {
            out[starter] = composite;
            continue;
          }
        }
      }
      if (cls == 0) {
        starter = out.size();
        last_class = 0;
      } else {
        last_class = cls;
      }
      out.push_back(cp);
    }
    cps.swap(out);
  }
  std::string result;
  result.reserve(text.size());
  for (uint32_t cp : cps) AppendUtf8(cp, &result);
  return result;
}

std::string Lowercase(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const auto b = static_cast<uint8_t>(text[pos]);
    if (b < 0x80) {
      out.push_back(static_cast<char>(b >= 'A' && b <= 'Z' ? b + 32 : b));
      ++pos;
      continue;
    }
    uint32_t cp = DecodeUtf8(text, &pos);
    auto it = std::lower_bound(std::begin(kLowercase), std::end(kLowercase), cp,
                               [](const LowercaseEntry& e, uint32_t c) { return e.code_point < c; });
    if (it != std::end(kLowercase) && it->code_point == cp) {
      AppendUtf8(it->lower, &out);
      continue;
    }
    bool special = false;
    for (const auto& e : kLowercaseSpecial) {
      if (e.code_point == cp) {
        for (uint32_t c : e.lower) {
          if (c != 0) AppendUtf8(c, &out);
        }
        special = true;
      }
    }
    if (!special) AppendUtf8(cp, &out);
  }
  return out;
}

}  // namespace tandem::unicode
