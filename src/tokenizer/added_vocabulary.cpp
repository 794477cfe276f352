#include "tokenizer/added_vocabulary.h"

#include <algorithm>

#include "tokenizer/unicode.h"

namespace tandem {
namespace {

uint32_t LastChar(std::string_view s) {
  size_t start = s.size() - 1;
  while (start > 0 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
  size_t pos = start;
  return unicode::DecodeUtf8(s, &pos);
}

bool IsWordChar(uint32_t cp) { return cp == '_' || unicode::IsAlphanumeric(cp); }

}  // namespace

void AddedVocabulary::AddPattern(Trie* trie, const std::string& pattern, int32_t token) {
  int32_t node = 0;
  for (char ch : pattern) {
    const auto c = static_cast<uint8_t>(ch);
    int32_t child = -1;
    for (const auto& [k, v] : trie->nodes[node].children) {
      if (k == c) child = v;
    }
    if (child < 0) {
      child = static_cast<int32_t>(trie->nodes.size());
      trie->nodes[node].children.emplace_back(c, child);
      trie->nodes.emplace_back();
    }
    node = child;
  }
  if (trie->nodes[node].token < 0) trie->nodes[node].token = token;
  trie->first_byte[static_cast<uint8_t>(pattern[0])] = true;
}

void AddedVocabulary::Split(const Trie& trie, std::string_view text, bool parse_special,
                            std::vector<TextSegment>* out) const {
  size_t start_offset = 0;
  size_t pos = 0;
  const size_t n = text.size();
  while (pos < n) {
    if (!trie.first_byte[static_cast<uint8_t>(text[pos])]) {
      ++pos;
      continue;
    }
    // Longest match starting at pos.
    int32_t node = 0, best = -1;
    size_t best_end = 0;
    for (size_t i = pos; i < n; ++i) {
      int32_t child = -1;
      for (const auto& [k, v] : trie.nodes[node].children) {
        if (k == static_cast<uint8_t>(text[i])) child = v;
      }
      if (child < 0) break;
      node = child;
      int32_t t = trie.nodes[node].token;
      if (t >= 0) {
        best = t;
        best_end = i + 1;
      }
    }
    if (best < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[best];
    size_t start = pos, stop = best_end;
    // Like HF: a match that is not used still consumes its text (non-overlapping search).
    if (token.special && !parse_special) {
      pos = best_end;
      continue;
    }
    if (token.single_word) {
      bool start_ok = start == 0 || !IsWordChar(LastChar(text.substr(0, start)));
      size_t p = stop;
      bool stop_ok = stop == n || !IsWordChar(unicode::DecodeUtf8(text, &p));
      if (!start_ok || !stop_ok) {
        pos = best_end;
        continue;
      }
    }
    if (token.lstrip) {
      size_t s = start;
      while (s > 0) {
        size_t prev = s - 1;
        while (prev > 0 && (static_cast<uint8_t>(text[prev]) & 0xC0) == 0x80) --prev;
        size_t p = prev;
        if (!unicode::IsWhitespace(unicode::DecodeUtf8(text, &p))) break;
        s = prev;
      }
      start = std::max(s, start_offset);
    }
    if (token.rstrip) {
      while (stop < n) {
        size_t p = stop;
        if (!unicode::IsWhitespace(unicode::DecodeUtf8(text, &p))) break;
        stop = p;
      }
    }
    if (start > start_offset) out->push_back({-1, start_offset, start});
    out->push_back({token.id, start, stop});
    start_offset = stop;
    pos = stop;
  }
  if (start_offset < n || out->empty()) out->push_back({-1, start_offset, n});
}

}  // namespace tandem
