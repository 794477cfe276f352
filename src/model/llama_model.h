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
#include "model/tensor_specs.h"
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

// Decode steps through the backend's graphs (Backend::RunDecodeGraph).
struct DecodeGraphOptions {
  int32_t max_batch = 0;   // largest batch graphed: at most the workspace's tokens and rows
  int32_t block_size = 0;  // the KV cache's
  bool capture = true;     // false: the same padded fixed-shape steps, launched eagerly (tests)
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

  // From now on, decode-only steps (one token per sequence, every row's logits asked for) of up to
  // options.max_batch sequences are padded to a bucket size (DecodeGraphBuckets) and a table width
  // (a power of two) and run through the backend's decode graphs; other steps stay eager.
  // Unimplemented when the backend has no graphs for this model (nothing changes). Call after
  // ReserveWorkspace.
  Status EnableDecodeGraphs(const DecodeGraphOptions& options);
  bool decode_graphs_enabled() const { return graphs_enabled_; }
  // 1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, then every 128, up to max_batch (included).
  static std::vector<int32_t> DecodeGraphBuckets(int32_t max_batch);

  // logits: resized to [logits_rows.size(), vocab_size], row-major.
  Status Forward(const ModelInput& input, const KvCache& cache, std::vector<float>* logits);
  // The same, leaving the logits on the backend: f32 [logits_rows.size(), vocab_size] in the
  // model's workspace, valid until the next forward (the engine samples from it with
  // Backend::SampleRows, so only token ids come back to the host). Data is null when no row samples.
  StatusOr<Tensor> ForwardToBackend(const ModelInput& input, const KvCache& cache);

 private:
  // q|k|v and gate|up are fused at load (rows stacked): one Linear each.
  struct LayerWeights {
    Tensor input_norm, post_norm;
    Tensor qkv, o;            // qkv [q_dim + 2 kv_dim, H]
    Tensor qkv_bias, o_bias;
    Tensor gate_up, down;     // gate_up [2 I, H]
    Tensor gate_up_bias, down_bias;
  };

  LlamaModel(const ModelConfig& config, Backend& backend) : config_(config), backend_(backend) {}
  Status UploadAll(const WeightSource& weights);
  // `spec` from `weights`, checked against the config's shape and a float dtype.
  StatusOr<HostTensor> GetChecked(const WeightSource& weights, const ExpectedTensor& spec) const;
  // Uploads one weight, keeping its storage (or, zero copy, its host bytes) with the model.
  StatusOr<Tensor> Upload(const HostTensor& host);
  StatusOr<Tensor> Scratch(size_t slot, DType dtype, std::initializer_list<int64_t> dims);
  // Whether a step of `num_tokens` tokens runs the fused layer (Backend::FusesSmallBatch).
  bool FusedStep(int64_t num_tokens) const;
  // Embedding and every decoder layer over the step's tokens. Unfused: leaves the last layer's
  // output in the kHidden slot and the residual stream before it in kResidual; fused
  // (FusedStep): the whole residual stream, last layer included, in kResidual.
  // `after_layer_kv` (may be empty) runs after each layer's K/V writes were enqueued. Graph
  // capture passes none: only prefill steps stream KV, and they run eagerly.
  Status RunLayers(std::span<const int32_t> token_ids, const AttentionMetadata& meta, const KvCache& cache,
                   const std::function<Status(int32_t)>& after_layer_kv);
  bool IsGraphableDecode(const ModelInput& input) const;
  StatusOr<Tensor> ForwardDecodeGraph(const ModelInput& input, const KvCache& cache);

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
  int64_t reserved_tokens_ = 0, reserved_rows_ = 0;
  // Decode graphs: constant after EnableDecodeGraphs, but for the padded per-step inputs (sized
  // there, refilled every graphed step).
  bool graphs_enabled_ = false;
  DecodeGraphOptions graph_options_;
  std::vector<int32_t> graph_buckets_;
  int32_t graph_max_blocks_ = 0;
  std::vector<int32_t> graph_ids_, graph_positions_, graph_query_start_, graph_context_lens_,
      graph_tables_;
  std::vector<int64_t> graph_slots_;
};

}  // namespace tandem
