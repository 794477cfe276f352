#include "model/gguf_vocab.h"

#include <optional>
#include <string>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace tandem {
namespace {

Status FieldError(const GgufFile& f, std::string_view key, std::string_view what) {
  return InvalidArgumentError(fmt::format("{}: metadata key '{}' {}", f.path().string(), key, what));
}

StatusOr<bool> BoolOr(const GgufFile& f, const std::string& key, bool fallback) {
  TANDEM_ASSIGN_OR_RETURN(std::optional<bool> v, f.FindBool(key));
  return v.value_or(fallback);
}

// An optional token id that must index the token list; `strict` false drops a bad one with a
// warning (some converters write -1 or a past-the-end id for padding).
StatusOr<std::optional<int32_t>> TokenId(const GgufFile& f, const std::string& key, size_t n_tokens,
                                         bool strict) {
  TANDEM_ASSIGN_OR_RETURN(std::optional<int64_t> id, f.FindInt(key));
  if (!id) return std::optional<int32_t>();
  if (*id < 0 || static_cast<uint64_t>(*id) >= n_tokens) {
    if (!strict) {
      spdlog::warn("{}: ignoring metadata key '{}' = {}: not in [0, {})", f.path().string(), key,
                   *id, n_tokens);
      return std::optional<int32_t>();
    }
    return FieldError(f, key, fmt::format("= {} is not a token id in [0, {})", *id, n_tokens));
  }
  return std::optional<int32_t>(static_cast<int32_t>(*id));
}

}  // namespace

StatusOr<VocabSpec> VocabSpecFromGguf(const GgufFile& f) {
  VocabSpec v;
  TANDEM_ASSIGN_OR_RETURN(v.model, f.GetString("tokenizer.ggml.model"));
  if (v.model != "gpt2" && v.model != "llama") {
    return FieldError(f, "tokenizer.ggml.model",
                      fmt::format("is '{}'; supported tokenizers are 'gpt2' (byte-level BPE) and "
                                  "'llama'", v.model));
  }
  TANDEM_ASSIGN_OR_RETURN(std::optional<std::string> pre, f.FindString("tokenizer.ggml.pre"));
  v.pre = pre.value_or("default");
  TANDEM_ASSIGN_OR_RETURN(v.tokens, f.GetStringArray("tokenizer.ggml.tokens"));
  if (v.tokens.empty()) return FieldError(f, "tokenizer.ggml.tokens", "is empty");
  const size_t n = v.tokens.size();

  if (f.FindValue("tokenizer.ggml.merges") != nullptr) {
    TANDEM_ASSIGN_OR_RETURN(v.merges, f.GetStringArray("tokenizer.ggml.merges"));
  }
  if (v.model == "gpt2" && v.merges.empty()) {
    return FieldError(f, "tokenizer.ggml.merges", "is missing or empty (required for 'gpt2' BPE)");
  }
  if (const GgufValue* scores = f.FindValue("tokenizer.ggml.scores")) {
    if (scores->type != GgufValueType::kArray || scores->element_type != GgufValueType::kFloat32 ||
        scores->elements.size() != n) {
      return FieldError(f, "tokenizer.ggml.scores",
                        fmt::format("must be an array of {} float32 (one per token)", n));
    }
    v.scores.reserve(n);
    for (const GgufValue& e : scores->elements) v.scores.push_back(static_cast<float>(e.float_value));
  }
  if (f.FindValue("tokenizer.ggml.token_type") != nullptr) {
    TANDEM_ASSIGN_OR_RETURN(std::vector<int64_t> types, f.GetIntArray("tokenizer.ggml.token_type"));
    if (types.size() != n) {
      return FieldError(f, "tokenizer.ggml.token_type",
                        fmt::format("has {} entries for {} tokens", types.size(), n));
    }
    v.token_types.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      if (types[i] < 0 || types[i] > static_cast<int64_t>(VocabTokenType::kByte)) {
        return FieldError(f, "tokenizer.ggml.token_type",
                          fmt::format("entry {} = {} is not a token type in [0, 6]", i, types[i]));
      }
      v.token_types.push_back(static_cast<VocabTokenType>(types[i]));
    }
  }
  TANDEM_ASSIGN_OR_RETURN(v.bos_id, TokenId(f, "tokenizer.ggml.bos_token_id", n, true));
  TANDEM_ASSIGN_OR_RETURN(v.eos_id, TokenId(f, "tokenizer.ggml.eos_token_id", n, true));
  TANDEM_ASSIGN_OR_RETURN(v.eot_id, TokenId(f, "tokenizer.ggml.eot_token_id", n, true));
  TANDEM_ASSIGN_OR_RETURN(v.unknown_id, TokenId(f, "tokenizer.ggml.unknown_token_id", n, false));
  TANDEM_ASSIGN_OR_RETURN(v.padding_id, TokenId(f, "tokenizer.ggml.padding_token_id", n, false));
  TANDEM_ASSIGN_OR_RETURN(v.add_bos, BoolOr(f, "tokenizer.ggml.add_bos_token", v.add_bos));
  TANDEM_ASSIGN_OR_RETURN(v.add_eos, BoolOr(f, "tokenizer.ggml.add_eos_token", v.add_eos));
  TANDEM_ASSIGN_OR_RETURN(v.add_space_prefix,
                          BoolOr(f, "tokenizer.ggml.add_space_prefix", v.add_space_prefix));
  TANDEM_ASSIGN_OR_RETURN(std::optional<std::string> tmpl,
                          f.FindString("tokenizer.chat_template"));
  v.chat_template = tmpl.value_or("");
  return v;
}

}  // namespace tandem
