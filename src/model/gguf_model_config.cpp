#include "model/gguf_model_config.h"

#include <optional>
#include <string>

#include <fmt/format.h>

namespace tandem {
namespace {

Status FieldError(const GgufFile& f, std::string_view key, std::string_view what) {
  return InvalidArgumentError(fmt::format("{}: metadata key '{}' {}", f.path().string(), key, what));
}

// A required positive integer.
StatusOr<int64_t> PositiveInt(const GgufFile& f, const std::string& key) {
  TANDEM_ASSIGN_OR_RETURN(int64_t v, f.GetInt(key));
  if (v <= 0) return FieldError(f, key, fmt::format("must be > 0, got {}", v));
  return v;
}

Status ParseRopeScaling(const GgufFile& f, const std::string& a, ModelConfig* c) {
  RopeConfig& rope = c->rope;
  TANDEM_ASSIGN_OR_RETURN(std::optional<std::string> type, f.FindString(a + ".rope.scaling.type"));
  TANDEM_ASSIGN_OR_RETURN(std::optional<double> factor, f.FindFloat(a + ".rope.scaling.factor"));
  TANDEM_ASSIGN_OR_RETURN(std::optional<double> scale_linear, f.FindFloat(a + ".rope.scale_linear"));
  if (!type && scale_linear && *scale_linear != 1.0) {  // pre-2024 files
    type = "linear";
    factor = scale_linear;
  }
  const std::string t = type.value_or("none");
  if (t == "none") {
    rope.type = RopeType::kDefault;
  } else if (t == "linear") {
    rope.type = RopeType::kLinear;
  } else if (t == "yarn") {
    rope.type = RopeType::kYarn;
  } else {
    return FieldError(f, a + ".rope.scaling.type",
                      fmt::format("'{}' is not supported (none, linear, yarn)", t));
  }
  if (rope.type == RopeType::kDefault) return OkStatus();
  if (!factor || *factor <= 0.0) {
    return FieldError(f, a + ".rope.scaling.factor",
                      fmt::format("must be present and > 0 for rope scaling '{}'", t));
  }
  rope.factor = *factor;
  if (rope.type == RopeType::kYarn) {
    TANDEM_ASSIGN_OR_RETURN(std::optional<int64_t> original,
                            f.FindInt(a + ".rope.scaling.original_context_length"));
    rope.original_max_position_embeddings = original.value_or(c->max_position_embeddings);
    if (rope.original_max_position_embeddings <= 0) {
      return FieldError(f, a + ".rope.scaling.original_context_length", "must be > 0");
    }
    TANDEM_ASSIGN_OR_RETURN(std::optional<double> beta_fast, f.FindFloat(a + ".rope.scaling.yarn_beta_fast"));
    TANDEM_ASSIGN_OR_RETURN(std::optional<double> beta_slow, f.FindFloat(a + ".rope.scaling.yarn_beta_slow"));
    TANDEM_ASSIGN_OR_RETURN(std::optional<double> attn, f.FindFloat(a + ".rope.scaling.attn_factor"));
    if (beta_fast) rope.beta_fast = *beta_fast;
    if (beta_slow) rope.beta_slow = *beta_slow;
    if (attn) rope.attention_factor = *attn;
  }
  return OkStatus();
}

// An optional token id that must index the vocabulary.
StatusOr<std::optional<int32_t>> TokenId(const GgufFile& f, const std::string& key, size_t n_tokens) {
  TANDEM_ASSIGN_OR_RETURN(std::optional<int64_t> id, f.FindInt(key));
  if (!id) return std::optional<int32_t>();
  if (*id < 0 || static_cast<uint64_t>(*id) >= n_tokens) {
    return FieldError(f, key, fmt::format("= {} is not a token id in [0, {})", *id, n_tokens));
  }
  return std::optional<int32_t>(static_cast<int32_t>(*id));
}

}  // namespace

StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& f) {
  TANDEM_ASSIGN_OR_RETURN(std::string arch, f.GetString("general.architecture"));
  if (arch != "llama") {
    return InvalidArgumentError(fmt::format(
        "{}: general.architecture is '{}'; only 'llama' GGUF files are supported", f.path().string(),
        arch));
  }
  const std::string a = arch;
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.arch = ModelArch::kLlama;
  c.dtype = DType::kBF16;
  TANDEM_ASSIGN_OR_RETURN(c.num_layers, PositiveInt(f, a + ".block_count"));
  TANDEM_ASSIGN_OR_RETURN(c.hidden_size, PositiveInt(f, a + ".embedding_length"));
  TANDEM_ASSIGN_OR_RETURN(c.intermediate_size, PositiveInt(f, a + ".feed_forward_length"));
  TANDEM_ASSIGN_OR_RETURN(c.num_heads, PositiveInt(f, a + ".attention.head_count"));
  TANDEM_ASSIGN_OR_RETURN(c.max_position_embeddings, PositiveInt(f, a + ".context_length"));
  TANDEM_ASSIGN_OR_RETURN(std::optional<int64_t> kv_heads,
                          f.FindInt(a + ".attention.head_count_kv"));
  c.num_kv_heads = kv_heads.value_or(c.num_heads);
  if (c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0) {
    return FieldError(f, a + ".attention.head_count_kv",
                      fmt::format("= {} must be > 0 and divide {}.attention.head_count = {}",
                                  c.num_kv_heads, a, c.num_heads));
  }
  TANDEM_ASSIGN_OR_RETURN(std::optional<int64_t> key_length,
                          f.FindInt(a + ".attention.key_length"));
  TANDEM_ASSIGN_OR_RETURN(std::optional<int64_t> value_length,
                          f.FindInt(a + ".attention.value_length"));
  if (key_length) {
    c.head_dim = *key_length;
  } else if (c.hidden_size % c.num_heads == 0) {
    c.head_dim = c.hidden_size / c.num_heads;
  } else {
    return FieldError(f, a + ".embedding_length",
                      fmt::format("= {} is not a multiple of the head count {} (and {}.attention."
                                  "key_length is absent)", c.hidden_size, c.num_heads, a));
  }
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) {
    return FieldError(f, a + ".attention.key_length",
                      fmt::format("head dim {} must be positive and even", c.head_dim));
  }
  if (value_length && *value_length != c.head_dim) {
    return FieldError(f, a + ".attention.value_length",
                      fmt::format("= {} differs from the key length {} (not supported)",
                                  *value_length, c.head_dim));
  }
  TANDEM_ASSIGN_OR_RETURN(std::optional<int64_t> rope_dims, f.FindInt(a + ".rope.dimension_count"));
  if (rope_dims && *rope_dims != c.head_dim) {
    return FieldError(f, a + ".rope.dimension_count",
                      fmt::format("= {} differs from the head dim {} (partial rotary embeddings are "
                                  "not supported for llama)", *rope_dims, c.head_dim));
  }
  TANDEM_ASSIGN_OR_RETURN(std::optional<double> eps,
                          f.FindFloat(a + ".attention.layer_norm_rms_epsilon"));
  if (!eps || !(*eps > 0.0 && *eps < 1.0)) {
    return FieldError(f, a + ".attention.layer_norm_rms_epsilon", "must be present and in (0, 1)");
  }
  c.rms_norm_eps = *eps;
  TANDEM_ASSIGN_OR_RETURN(std::optional<double> theta, f.FindFloat(a + ".rope.freq_base"));
  c.rope.theta = theta.value_or(10000.0);
  if (!(c.rope.theta > 0.0)) {
    return FieldError(f, a + ".rope.freq_base", fmt::format("must be > 0, got {}", c.rope.theta));
  }
  TANDEM_RETURN_IF_ERROR(ParseRopeScaling(f, a, &c));
  if (f.FindTensor("rope_freqs.weight") != nullptr) {
    return UnimplementedError(f.path().string() +
                              ": tensor 'rope_freqs.weight' (llama3 rope frequency factors) is not "
                              "supported yet; load the Hugging Face checkpoint instead");
  }

  // Vocabulary size: llama.vocab_size, else the token list, else the embedding's row count.
  TANDEM_ASSIGN_OR_RETURN(std::optional<int64_t> vocab, f.FindInt(a + ".vocab_size"));
  if (!vocab) {
    if (const GgufValue* tokens = f.FindValue("tokenizer.ggml.tokens");
        tokens != nullptr && tokens->type == GgufValueType::kArray) {
      vocab = static_cast<int64_t>(tokens->elements.size());
    } else if (const GgufTensorInfo* embd = f.FindTensor("token_embd.weight");
               embd != nullptr && embd->ne.size() == 2) {
      vocab = embd->ne[1];
    }
  }
  if (!vocab || *vocab <= 0) {
    return FieldError(f, a + ".vocab_size",
                      "is missing and neither tokenizer.ggml.tokens nor token_embd.weight gives "
                      "the vocabulary size");
  }
  c.vocab_size = *vocab;

  c.tie_word_embeddings = f.FindTensor("output.weight") == nullptr;
  c.attention_bias = f.FindTensor("blk.0.attn_q.bias") != nullptr;
  c.attention_output_bias = f.FindTensor("blk.0.attn_output.bias") != nullptr;
  c.mlp_bias = f.FindTensor("blk.0.ffn_up.bias") != nullptr;

  const auto n_ids = static_cast<size_t>(c.vocab_size);
  TANDEM_ASSIGN_OR_RETURN(std::optional<int32_t> bos, TokenId(f, "tokenizer.ggml.bos_token_id", n_ids));
  TANDEM_ASSIGN_OR_RETURN(std::optional<int32_t> eos, TokenId(f, "tokenizer.ggml.eos_token_id", n_ids));
  TANDEM_ASSIGN_OR_RETURN(std::optional<int32_t> eot, TokenId(f, "tokenizer.ggml.eot_token_id", n_ids));
  if (bos) c.bos_token_id = *bos;
  if (eos) c.eos_token_ids.push_back(*eos);
  if (eot && eot != eos) c.eos_token_ids.push_back(*eot);
  return c;
}

}  // namespace tandem
