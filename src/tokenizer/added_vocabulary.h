// AddedVocabulary: the `added_tokens` of a HF tokenizer.json, found inside text before the model
// runs (leftmost-longest, like HF's Aho-Corasick), honouring lstrip / rstrip / single_word and
// `normalized` (matched on normalized text instead of the raw input). Constant after construction.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tandem {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

// A piece of text: either an added token (id >= 0) or plain text to normalize / tokenize.
struct TextSegment {
  int32_t token_id = -1;
  size_t begin = 0;  // byte offsets into the text given to Split
  size_t end = 0;
};

class AddedVocabulary {
 public:
  // `normalize` turns a normalized token's content into the form it is matched in.
  template <typename NormalizeFn>
  AddedVocabulary(std::vector<AddedToken> tokens, NormalizeFn normalize) : tokens_(std::move(tokens)) {
    for (size_t i = 0; i < tokens_.size(); ++i) {
      const AddedToken& t = tokens_[i];
      if (t.content.empty()) continue;
      if (t.normalized) {
        AddPattern(&normalized_trie_, normalize(t.content), static_cast<int32_t>(i));
      } else {
        AddPattern(&raw_trie_, t.content, static_cast<int32_t>(i));
      }
    }
  }

  // Splits raw input on non-normalized tokens (normalized == false) or normalized text on
  // normalized ones. `parse_special` false: special tokens are not matched (plain text).
  void SplitRaw(std::string_view text, bool parse_special, std::vector<TextSegment>* out) const {
    Split(raw_trie_, text, parse_special, out);
  }
  void SplitNormalized(std::string_view text, bool parse_special, std::vector<TextSegment>* out) const {
    Split(normalized_trie_, text, parse_special, out);
  }
  bool has_normalized() const { return normalized_trie_.nodes.size() > 1; }
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  struct Trie {
    struct Node {
      int32_t token = -1;  // index into tokens_
      std::vector<std::pair<uint8_t, int32_t>> children;
    };
    std::vector<Node> nodes{Node{}};
    bool first_byte[256] = {};
  };
  static void AddPattern(Trie* trie, const std::string& pattern, int32_t token);
  void Split(const Trie& trie, std::string_view text, bool parse_special,
             std::vector<TextSegment>* out) const;

  std::vector<AddedToken> tokens_;
  Trie raw_trie_;
  Trie normalized_trie_;
};

}  // namespace tandem
