#include "model/tensor_specs.h"

#include <fmt/format.h>

namespace tandem {

std::vector<ExpectedTensor> LlamaFamilyTensorSpecs(const ModelConfig& c) {
  std::vector<ExpectedTensor> specs;
  auto add = [&](std::string name, std::vector<int64_t> shape, TensorRole role, int64_t layer) {
    specs.push_back(ExpectedTensor{std::move(name), c.dtype, std::move(shape), role, layer});
  };
  const int64_t hidden = c.hidden_size;
  const int64_t q_dim = c.num_heads * c.head_dim;
  const int64_t kv_dim = c.num_kv_heads * c.head_dim;
  const int64_t inter = c.intermediate_size;

  specs.reserve(static_cast<size_t>(3 + c.num_layers * 15));
  add("model.embed_tokens.weight", {c.vocab_size, hidden}, TensorRole::kEmbedding, -1);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    add(p + "input_layernorm.weight", {hidden}, TensorRole::kNorm, i);
    add(p + "self_attn.q_proj.weight", {q_dim, hidden}, TensorRole::kMatrix, i);
    if (c.attention_bias) add(p + "self_attn.q_proj.bias", {q_dim}, TensorRole::kBias, i);
    add(p + "self_attn.k_proj.weight", {kv_dim, hidden}, TensorRole::kMatrix, i);
    if (c.attention_bias) add(p + "self_attn.k_proj.bias", {kv_dim}, TensorRole::kBias, i);
    add(p + "self_attn.v_proj.weight", {kv_dim, hidden}, TensorRole::kMatrix, i);
    if (c.attention_bias) add(p + "self_attn.v_proj.bias", {kv_dim}, TensorRole::kBias, i);
    add(p + "self_attn.o_proj.weight", {hidden, q_dim}, TensorRole::kMatrix, i);
    if (c.attention_output_bias) add(p + "self_attn.o_proj.bias", {hidden}, TensorRole::kBias, i);
    add(p + "post_attention_layernorm.weight", {hidden}, TensorRole::kNorm, i);
    add(p + "mlp.gate_proj.weight", {inter, hidden}, TensorRole::kMatrix, i);
    if (c.mlp_bias) add(p + "mlp.gate_proj.bias", {inter}, TensorRole::kBias, i);
    add(p + "mlp.up_proj.weight", {inter, hidden}, TensorRole::kMatrix, i);
    if (c.mlp_bias) add(p + "mlp.up_proj.bias", {inter}, TensorRole::kBias, i);
    add(p + "mlp.down_proj.weight", {hidden, inter}, TensorRole::kMatrix, i);
    if (c.mlp_bias) add(p + "mlp.down_proj.bias", {hidden}, TensorRole::kBias, i);
  }
  add("model.norm.weight", {hidden}, TensorRole::kNorm, -1);
  if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, hidden}, TensorRole::kMatrix, -1);
  return specs;
}

}  // namespace tandem
