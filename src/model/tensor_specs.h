// The tensors a Llama-family model (Llama, Mistral, Qwen2) is made of, by Hugging Face name, with
// the shape and dtype a checkpoint for a given ModelConfig must hold. The weight loader validates
// checkpoints against this list; DummyWeightSource generates exactly this list.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/model_config.h"
#include "tandem/dtype.h"

namespace tandem {

enum class TensorRole {
  kEmbedding,  // model.embed_tokens.weight
  kNorm,       // RMSNorm weights (input_layernorm, post_attention_layernorm, model.norm)
  kMatrix,     // projection weights [out_features, in_features], lm_head
  kBias,       // projection biases [out_features]
};

struct ExpectedTensor {
  std::string name;             // e.g. "model.layers.3.self_attn.q_proj.weight"
  DType dtype = DType::kBF16;   // the checkpoint dtype (ModelConfig::dtype)
  std::vector<int64_t> shape;   // row-major, HF layout: Linear weights are [out, in]
  TensorRole role = TensorRole::kMatrix;
  int64_t layer = -1;           // decoder layer index, -1 for embeddings / final norm / lm_head

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// Every tensor of the model, in a fixed order: embeddings, then per layer input_layernorm,
// q/k/v/o projections (+ biases as configured), post_attention_layernorm, gate/up/down (+ biases),
// then model.norm and lm_head (absent when tie_word_embeddings).
std::vector<ExpectedTensor> LlamaFamilyTensorSpecs(const ModelConfig& config);

}  // namespace tandem
