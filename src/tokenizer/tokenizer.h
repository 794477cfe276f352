// Tokenizer: text <-> token ids, byte-for-byte what Hugging Face `tokenizers` produces for the
// same tokenizer.json (BPE models: GPT-2, Llama-3, Qwen2/2.5, SmolLM2, DeepSeek, Llama-2/Mistral).
//
// Encode: added/special tokens are cut out of the raw text (AddedVocabulary), the rest is
// normalized (Normalizer), split into words (PreTokenizer), and each word is BPE-merged (BpeModel);
// with add_special_tokens the post-processor's template (BOS/EOS) is applied.
// Decode: ids -> token strings -> decoder steps (Decoder), streamed by IncrementalDecoder.
//
// A Tokenizer is immutable after construction (its word cache is internally synchronized):
// share one between threads.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/status.h"
#include "tokenizer/added_vocabulary.h"
#include "tokenizer/vocab_spec.h"

namespace tandem {

class BpeModel;
class Decoder;
class Normalizer;
class PreTokenizer;

struct EncodeOptions {
  bool add_special_tokens = false;  // apply the post-processor / add_bos_token template
  // Match special-token strings in the text as special tokens. Set false for untrusted input:
  // "<|im_start|>" typed by a user is then encoded as plain text (HF encode_special_tokens).
  bool parse_special = true;
};

class Tokenizer {
 public:
  ~Tokenizer();

  // A model directory or a tokenizer-only directory: tokenizer.json, and if present
  // tokenizer_config.json, generation_config.json and chat_template.jinja.
  static StatusOr<std::unique_ptr<Tokenizer>> FromDirectory(const std::filesystem::path& dir);
  // The contents of those files (the two configs may be empty).
  static StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view tokenizer_json,
                                                       std::string_view tokenizer_config_json = {},
                                                       std::string_view generation_config_json = {});
  // A vocabulary from a GGUF file.
  static StatusOr<std::unique_ptr<Tokenizer>> FromVocabSpec(const VocabSpec& spec);

  std::vector<int32_t> Encode(std::string_view text, const EncodeOptions& options = {}) const;
  // Unknown ids are skipped, as in HF.
  std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  int32_t vocab_size() const { return vocab_size_; }  // largest id + 1, added tokens included
  std::optional<int32_t> TokenToId(std::string_view token) const;
  std::optional<std::string> IdToToken(int32_t id) const;
  bool IsSpecial(int32_t id) const;

  std::optional<int32_t> bos_id() const { return bos_id_; }
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }  // all ids that end generation
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }
  const std::string& chat_template() const { return chat_template_; }

  // For IncrementalDecoder: the string the decoder sees for `id`, or nullptr to skip it.
  const std::string* DecoderToken(int32_t id, bool skip_special_tokens) const;
  const Decoder& decoder() const { return *decoder_; }

 private:
  Tokenizer();
  friend class TokenizerLoader;

  void EncodeText(std::string_view text, bool at_start, struct EncodeScratch* scratch,
                  std::vector<int32_t>* ids) const;
  void Finish();  // computes vocab_size_, id tables

  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<Normalizer> normalizer_;      // may be null
  std::unique_ptr<PreTokenizer> pre_tokenizer_;  // may be null: the whole text is one word
  std::unique_ptr<AddedVocabulary> added_;
  std::unique_ptr<Decoder> decoder_;
  // Post-processor template for one sequence: ids before and after it.
  std::vector<int32_t> prefix_ids_;
  std::vector<int32_t> suffix_ids_;

  int32_t vocab_size_ = 0;
  std::vector<const std::string*> id_to_token_;  // added content or model token, by id
  std::vector<uint8_t> special_;                 // by id

  std::optional<int32_t> bos_id_;
  std::vector<int32_t> eos_ids_;
  std::string bos_token_;
  std::string eos_token_;
  std::string chat_template_;
};

}  // namespace tandem
