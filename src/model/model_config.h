// ModelConfig: the architecture hyper-parameters of a decoder-only transformer, parsed from a
// Hugging Face config.json (both the classic `rope_theta`/`rope_scaling`/`torch_dtype` form and the
// newer `rope_parameters`/`dtype` form) or from GGUF metadata.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/dtype.h"
#include "tandem/status.h"

namespace tandem {

enum class ModelArch {
  kLlama,    // LlamaForCausalLM (Llama 2/3/3.1/3.2, SmolLM2)
  kMistral,  // MistralForCausalLM (optional sliding window)
  kQwen2,    // Qwen2ForCausalLM (q/k/v projections carry a bias)
};

enum class RopeType {
  kDefault,
  kLinear,   // positions divided by `factor`
  kDynamic,  // NTK-aware; base fixed for max_position_embeddings * factor (as vLLM does)
  kLlama3,   // Llama-3.1 frequency-dependent scaling
  kYarn,
};

struct RopeConfig {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;
  double factor = 1.0;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  // llama3 and yarn: the context length the model was pre-trained with.
  int64_t original_max_position_embeddings = 0;
  // yarn
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  std::optional<double> attention_factor;  // yarn mscale override
  // Fraction of head_dim that is rotated (1.0 for every supported model).
  double partial_rotary_factor = 1.0;
};

struct ModelConfig {
  std::string architecture;  // as written in config.json, e.g. "LlamaForCausalLM"
  ModelArch arch = ModelArch::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // == num_heads (MHA), 1 (MQA) or a divisor of num_heads (GQA)
  int64_t head_dim = 0;      // explicit in config, else hidden_size / num_heads
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v bias (always true for Qwen2)
  bool attention_output_bias = false;  // o_proj bias (Llama `attention_bias: true`)
  bool mlp_bias = false;
  std::optional<int64_t> sliding_window;  // Mistral; applied only when set and enabled
  DType dtype = DType::kBF16;  // checkpoint dtype from `dtype` / `torch_dtype`
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;  // config.json and generation_config.json, merged
};

// Parses config.json text. `source` names the file in error messages. Unknown architectures,
// missing or inconsistent fields (num_heads % num_kv_heads != 0, hidden_act other than silu, ...)
// are InvalidArgument errors naming the field.
StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view source);

// Reads `dir/config.json` and merges eos ids from `dir/generation_config.json` when present.
StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& dir);

std::string_view ModelArchName(ModelArch arch);
std::string_view RopeTypeName(RopeType type);

}  // namespace tandem
