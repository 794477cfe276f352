// Regex: a small backtracking regex engine for pre-tokenizer patterns, behaving like Oniguruma
// (what HF `tokenizers` uses): leftmost-first alternation, greedy/lazy/possessive quantifiers,
// Unicode classes (\p{L}, \p{N}, \p{Lu}..., \s, \d, \w), case-insensitive groups (?i:...),
// lookahead (?=...) (?!...), atomic groups (?>...). No backreferences, no lookbehind.
//
// Matching works on code points; the caller decodes text once (Utf8Text) and runs FindAll.
// A compiled Regex is immutable and may be shared between threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tandem/status.h"

namespace tandem {

// Text decoded to code points, with byte offsets (offsets[i] is the byte offset of code point i;
// offsets[size] == bytes) and per-code-point class bits (see regex.cpp).
struct Utf8Text {
  std::vector<uint32_t> cps;
  std::vector<uint32_t> props;
  std::vector<uint32_t> offsets;
  void Assign(std::string_view text);
  size_t size() const { return cps.size(); }
};

class Regex {
 public:
  static StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern);
  ~Regex();

  // Non-overlapping matches, left to right, as code point [begin, end) ranges. Empty matches are
  // skipped.
  void FindAll(const Utf8Text& text, std::vector<std::pair<uint32_t, uint32_t>>* matches) const;
  const std::string& pattern() const { return pattern_; }

  struct Program;

 private:
  Regex() = default;
  std::string pattern_;
  std::unique_ptr<Program> program_;
};

}  // namespace tandem
