// PreTokenizer: the `pre_tokenizer` section of a HF tokenizer.json (ByteLevel, Split, Metaspace,
// Digits, Whitespace, WhitespaceSplit, Sequence). Splits normalized text into words that the BPE
// model encodes independently. Immutable after construction; thread-safe.
//
// ByteLevel does not remap bytes here: the BPE model of a byte-level tokenizer is keyed by raw bytes
// (see bpe_model.h), so the GPT-2 alphabet never appears on the encode path.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "tandem/status.h"
#include "tokenizer/regex.h"

namespace tandem {

// Reusable buffers for one thread's pre-tokenization.
struct PreTokenizeScratch {
  Utf8Text text;
  std::vector<std::pair<uint32_t, uint32_t>> matches;
  std::vector<std::string> pieces;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;

  // Appends the words of `piece` to *out. `at_start`: the piece begins at offset 0 of the input
  // (Metaspace prepend_scheme "first").
  virtual void Split(std::string_view piece, bool at_start, PreTokenizeScratch* scratch,
                     std::vector<std::string>* out) const = 0;
  // True when the pre-tokenizer's output equals its input (ByteLevel without regex or prefix).
  virtual bool IsIdentity() const { return false; }
  // True when it contains a ByteLevel step (the model then works on raw bytes).
  virtual bool IsByteLevel() const { return false; }

  // Runs the pre-tokenizer over `text` and appends the words to *words.
  void Run(std::string_view text, bool at_start, PreTokenizeScratch* scratch,
           std::vector<std::string>* words) const;

  static StatusOr<std::unique_ptr<PreTokenizer>> FromJson(const nlohmann::json& config);
  // The Split(regex, Isolated) step used for GGUF vocabularies; `byte_level` adds ByteLevel.
  static StatusOr<std::unique_ptr<PreTokenizer>> FromRegexes(const std::vector<std::string>& regexes,
                                                             bool byte_level);
};

// The GPT-2 pattern that ByteLevel(use_regex=true) applies.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace tandem
