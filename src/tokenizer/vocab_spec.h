// VocabSpec: a tokenizer described as plain data, the way GGUF files carry it
// (tokenizer.ggml.* keys). Tokenizer::FromVocabSpec builds a Tokenizer from it.
//
// The GGUF loader fills it; nothing here reads files. Ids are indices into `tokens`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tandem {

// llama.cpp's tokenizer.ggml.token_type values.
enum class VocabTokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,      // special tokens (<|eot_id|>, <s>): matched in text as special, skipped by
                     // Decode(skip_special_tokens=true)
  kUserDefined = 4,  // added tokens matched in text, not special
  kUnused = 5,
  kByte = 6,         // <0x0A>-style byte-fallback tokens (SentencePiece vocabularies)
};

struct VocabSpec {
  // tokenizer.ggml.model: "gpt2" (byte-level BPE with merges) or "llama" (SentencePiece-style BPE
  // over the U+2581 metaspace, with byte fallback; `scores` rank the merges when `merges` is empty).
  std::string model = "gpt2";
  // tokenizer.ggml.pre: selects the pre-tokenizer regexes for "gpt2" models ("gpt2", "llama-bpe",
  // "qwen2", "smollm", "deepseek-llm", "deepseek-coder", "starcoder", "default", ...).
  std::string pre = "default";

  std::vector<std::string> tokens;        // tokenizer.ggml.tokens, in the model's own alphabet
  std::vector<std::string> merges;        // tokenizer.ggml.merges, "left right" per entry, by rank
  std::vector<float> scores;              // tokenizer.ggml.scores (may be empty)
  std::vector<VocabTokenType> token_types;  // tokenizer.ggml.token_type (may be empty: all normal)

  std::optional<int32_t> bos_id;      // tokenizer.ggml.bos_token_id
  std::optional<int32_t> eos_id;      // tokenizer.ggml.eos_token_id
  std::optional<int32_t> eot_id;      // tokenizer.ggml.eot_token_id (also ends generation)
  std::optional<int32_t> unknown_id;  // tokenizer.ggml.unknown_token_id
  std::optional<int32_t> padding_id;  // tokenizer.ggml.padding_token_id
  bool add_bos = false;               // tokenizer.ggml.add_bos_token
  bool add_eos = false;               // tokenizer.ggml.add_eos_token
  bool add_space_prefix = true;       // tokenizer.ggml.add_space_prefix ("llama" models)

  std::string chat_template;  // tokenizer.chat_template (may be empty)
};

}  // namespace tandem
