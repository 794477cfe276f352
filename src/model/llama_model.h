// LlamaModel: the forward pass of the Llama family (Llama 2/3/3.1/3.2, SmolLM2, Mistral, Qwen2)
// written once against the Backend interface. Owns the uploaded weights and the activation
// workspace; borrows the backend and the KV cache.
//
// Forward() runs one engine step: a flat batch of tokens from many sequences (prefill chunks and
// decode tokens mixed), writes their K/V into the paged cache and returns float32 logits for the
// rows asked for.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "kv/kv_cache.h"
#include "model/model_config.h"
#include "model/weight_source.h"

namespace tandem {

struct ModelInput {
  std::span<const int32_t> token_ids;    // [T]
  AttentionMetadata attention;           // positions, slots, block tables
  std::span<const int32_t> logits_rows;  // token indices (into [0, T)) whose logits are returned
  // Optional: called once per layer right after that layer's K/V writes were enqueued (the KV
  // streamer of a prefill worker sends layer l while l + 1 computes).
  std::function<Status(int32_t layer)> after_layer_kv;
};

class LlamaModel {
 public:
  // Validates every tensor of `weights` against the config (missing tensor, wrong shape or dtype:
  // an error naming the source and the tensor), uploads them, precomputes RoPE tables for
  // `max_positions`. The model keeps the host bytes it was given alive (the CPU backend reads them in place).
  static StatusOr<std::unique_ptr<LlamaModel>> Load(const ModelConfig& config,
                                                    const WeightSource& weights, Backend& backend,
                                                    int64_t max_positions);

  const ModelConfig& config() const { return config_; }
  int64_t max_positions() const { return max_positions_; }

  // Allocates the activation workspace for steps of up to `max_tokens` tokens and `max_rows`
  // logits rows, so no step allocates afterwards (and a GPU backend can size its KV cache from
  // what is left).
  Status ReserveWorkspace(int64_t max_tokens, int64_t max_rows);

  // logits: resized to [logits_rows.size(), vocab_size], row-major.
  Status Forward(const ModelInput& input, const KvCache& cache, std::vector<float>* logits);
  // The same, leaving the logits on the backend: f32 [logits_rows.size(), vocab_size] in the
  // model's workspace, valid until the next forward (the engine samples from it with
  // Backend::SampleRows, so only token ids come back to the host). Data is null when no row samples.
  StatusOr<Tensor> ForwardToBackend(const ModelInput& input, const KvCache& cache);

 private:
  struct LayerWeights {
    Tensor input_norm, post_norm;
    Tensor q, k, v, o;
    Tensor q_bias, k_bias, v_bias, o_bias;
    Tensor gate, up, down;
    Tensor gate_bias, up_bias, down_bias;
  };

  LlamaModel(const ModelConfig& config, Backend& backend) : config_(config), backend_(backend) {}
  Status UploadAll(const WeightSource& weights);
  StatusOr<Tensor> Scratch(size_t slot, DType dtype, std::initializer_list<int64_t> dims);

  ModelConfig config_;
  Backend& backend_;
  int64_t max_positions_ = 0;
  std::vector<std::unique_ptr<DeviceBuffer>> weight_storage_;
  std::vector<std::shared_ptr<const void>> host_keepalive_;
  Tensor embed_tokens_, final_norm_, lm_head_;
  std::vector<LayerWeights> layers_;
  std::vector<std::unique_ptr<DeviceBuffer>> rope_storage_;
  RopeTables rope_;
  AttentionParams attention_params_;
  // Grow-only activation buffers, one per slot, reused every step.
  std::vector<std::unique_ptr<DeviceBuffer>> scratch_;
};

}  // namespace tandem
