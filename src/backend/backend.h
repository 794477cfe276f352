// Backend: the operations a decoder-only transformer needs, behind one interface, so the engine and
// the model code run unchanged on the CPU reference backend and on CUDA (leveldb's Env pattern).
//
// Threading: a Backend is driven by one thread (the worker's engine thread). Ops are enqueued in
// order on the backend's stream; results are visible to the host only after Synchronize() or a
// copy to host. The CPU backend runs each op to completion before returning.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backend/tensor.h"
#include "model/host_tensor.h"
#include "sampling/sampler.h"
#include "tandem/status.h"

namespace tandem {

// Memory owned by a backend; freed when destroyed.
class DeviceBuffer {
 public:
  virtual ~DeviceBuffer() = default;
  virtual void* data() const = 0;
  virtual size_t size() const = 0;
};

// The paged KV cache of one layer: K and V, each [num_blocks, num_kv_heads, block_size, head_dim].
struct KvLayerView {
  Tensor k;
  Tensor v;
};

// Per-step description of the batch, in host memory, built by the model runner. Tokens of one
// sequence are contiguous; sequence i owns tokens [query_start[i], query_start[i + 1]).
struct AttentionMetadata {
  int32_t num_seqs = 0;
  int32_t num_tokens = 0;
  std::span<const int32_t> query_start;    // [num_seqs + 1]
  std::span<const int32_t> context_lens;   // [num_seqs]: KV length after this step (cached + new)
  std::span<const int32_t> block_tables;   // [num_seqs, max_blocks_per_seq], row-major
  int32_t max_blocks_per_seq = 0;
  std::span<const int32_t> positions;      // [num_tokens]
  std::span<const int64_t> slot_mapping;   // [num_tokens]: block_id * block_size + offset
  int32_t block_size = 0;
  int32_t max_query_len = 0;
  int32_t max_context_len = 0;
};

struct AttentionParams {
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  float scale = 1.0f;           // softmax scale, 1/sqrt(head_dim) unless the model says otherwise
  int32_t sliding_window = 0;   // 0: none; else a query at p sees keys in (p - window, p]
};

// Rotary embedding tables: cos/sin for positions [0, max_positions), rotary_dim / 2 each, computed
// on the host once (model/rope.h) so every backend rotates by the same values.
struct RopeTables {
  Tensor cos;  // f32 [max_positions, rotary_dim / 2]
  Tensor sin;
  int32_t rotary_dim = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string_view name() const = 0;
  // dtype of activations (f32 on CPU, bf16 on CUDA) and of the KV cache.
  virtual DType activation_dtype() const = 0;
  virtual DType kv_cache_dtype() const = 0;

  // Whether this backend's kernels support a model's attention shape (head dim, GQA ratio). Called
  // once at model load so an unsupported model is a clear error, never wrong output.
  virtual Status CheckSupported(const AttentionParams& params) const { return OkStatus(); }

  // --- memory -----------------------------------------------------------------------------------
  // ResourceExhausted when the backend cannot provide `bytes`.
  virtual StatusOr<std::unique_ptr<DeviceBuffer>> Allocate(size_t bytes) = 0;
  // Makes a weight usable by kernels. May return a view of `host` (zero copy, the CPU backend for
  // bf16/f16/f32) or a copy in device memory owned by `*storage`. `host` must outlive the view.
  virtual StatusOr<Tensor> UploadWeight(const HostTensor& host,
                                        std::unique_ptr<DeviceBuffer>* storage) = 0;
  // Host <-> backend copies (synchronous with respect to the host).
  virtual Status CopyToDevice(const void* src, Tensor dst) = 0;
  virtual Status CopyToHost(const Tensor& src, void* dst) = 0;
  // Backend-to-backend copy of src.nbytes() bytes.
  virtual Status Copy(const Tensor& src, Tensor dst) = 0;
  virtual Status Synchronize() = 0;
  // Bytes the KV cache may take now that weights and workspace are allocated (a GPU backend:
  // gpu_memory_utilization * total - used). nullopt: no limit known; the engine's kv_cache_bytes
  // applies.
  virtual std::optional<int64_t> KvCacheBudgetBytes() const { return std::nullopt; }

  // --- ops (shapes in comments; T = tokens in the step) --------------------------------------------
  // out[T, H] = table[ids[t], :]. ids are in host memory, already validated against the vocab.
  virtual Status Embedding(std::span<const int32_t> ids, const Tensor& table, Tensor out) = 0;
  // If residual is non-empty: residual += x, then out = rmsnorm(residual) * weight; else
  // out = rmsnorm(x) * weight. x [T, H], residual [T, H], weight [H].
  virtual Status RmsNorm(const Tensor& x, Tensor residual, const Tensor& weight, float eps,
                         Tensor out) = 0;
  // out[T, N] = x[T, K] @ weight[N, K]^T (+ bias[N]).
  virtual Status Linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor out) = 0;
  // out[T, I] = silu(gate) * up, where gate_up [T, 2I] is the fused projection: per row the I gate
  // values, then the I up values.
  virtual Status SiluMul(const Tensor& gate_up, Tensor out) = 0;
  // qkv [T, (num_heads + 2 * num_kv_heads) * head_dim] is the fused projection: per row q, then k,
  // then v. Writes q rotated (HF rotate_half convention, at `meta.positions`) into
  // q_out [T, num_heads * head_dim], and k rotated and v into the cache at `meta.slot_mapping`
  // (a negative slot is not written: padded rows of a fixed-size batch). qkv is not modified.
  virtual Status RopeAndWriteKv(const Tensor& qkv, Tensor q_out, const RopeTables& rope,
                                const AttentionParams& params, const AttentionMetadata& meta,
                                KvLayerView cache) = 0;
  // Causal attention of q [T, num_heads * head_dim] over the paged cache (which already holds
  // this step's keys and values): out [T, num_heads * head_dim].
  virtual Status Attention(const Tensor& q, KvLayerView cache, const AttentionParams& params,
                           const AttentionMetadata& meta, Tensor out) = 0;
  // RopeAndWriteKv into q_scratch, then Attention of it into out: the two in one call, so a
  // backend may fuse them (the CUDA backend's decode attention rotates q itself and writes the new
  // keys and values, q_scratch unused). The model calls it unless it must act between the two.
  virtual Status RopeWriteKvAttention(const Tensor& qkv, Tensor q_scratch, const RopeTables& rope,
                                      const AttentionParams& params, const AttentionMetadata& meta,
                                      KvLayerView cache, Tensor out);
  // out[R, H] = x[rows[r], :]. rows in host memory.
  virtual Status GatherRows(const Tensor& x, std::span<const int32_t> rows, Tensor out) = 0;

  // --- fused small-batch ops (optional) ------------------------------------------------------------
  // A backend whose FusesSmallBatch(rows, k_dims) is true implements the three ops below for
  // `rows` rows and every reduction length in `k_dims`; the model then runs each layer as
  //   qkv = NormLinear(residual, input_norm, qkv);  RoPE;  attention;  LinearAddResidual(attn, o, residual);
  //   act = NormLinearSiluMul(residual, post_norm, gate_up);  LinearAddResidual(act, down, residual)
  // with the whole residual stream in `residual` (no separate norm, SiLU or add; see
  // LlamaModel::RunLayers), and the final norm as NormLinear into the LM head.
  virtual bool FusesSmallBatch(int64_t rows, std::span<const int64_t> k_dims) const { return false; }
  // out[T, N] = (rmsnorm(x) * norm_weight) @ weight[N, K]^T (+ bias[N]); x [T, K] is not modified.
  virtual Status NormLinear(const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& weight,
                            const Tensor& bias, Tensor out) {
    return UnimplementedError(std::string(name()) + " backend: no fused NormLinear");
  }
  // out[T, I] = silu(g) * u where [g | u] = NormLinear(x, norm_weight, eps, gate_up [2I, K], bias [2I]).
  virtual Status NormLinearSiluMul(const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& gate_up,
                                   const Tensor& bias, Tensor out) {
    return UnimplementedError(std::string(name()) + " backend: no fused NormLinearSiluMul");
  }
  // residual[T, N] += x[T, K] @ weight[N, K]^T (+ bias[N]).
  virtual Status LinearAddResidual(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor residual) {
    return UnimplementedError(std::string(name()) + " backend: no fused LinearAddResidual");
  }

  // --- sampling -----------------------------------------------------------------------------------
  // One token per row of `logits` (f32 [R, V] on this backend) for inputs[r], with the semantics of
  // SampleToken (sampling/sampler.h), into outputs[r] (token, logprob, top logprobs as asked).
  // `logits` may be modified (the penalties are applied in place, like SampleToken does).
  // Synchronous with respect to the host: only the results come back.
  // Default: copies the rows to the host and runs SampleToken on each, in order (the reference; the
  // CPU backend uses it, so its results are those of SampleToken bit for bit).
  virtual Status SampleRows(const Tensor& logits, std::span<const SampleInput> inputs,
                            std::span<SampleOutput> outputs);

  // --- decode-step graphs (optional: CUDA graphs) -------------------------------------------------
  // A backend that supports them records the ops of a decode step once per padded batch size and
  // replays them. The model drives it (LlamaModel::ForwardToBackend); every other backend runs each
  // step eagerly. One graphed step:
  //   StageDecodeInputs(ids, meta, num_kv_blocks)  -- the padded batch's token ids and metadata into
  //                                                   fixed buffers (one async copy);
  //   RunDecodeGraph(key, capture, record)         -- record() enqueues the step's ops, which read the
  //                                                   staged inputs instead of uploading their own.
  virtual bool SupportsDecodeGraphs() const { return false; }
  // Allocates the fixed input buffers and workspaces for decode batches of up to `max_batch`
  // sequences with block tables of up to `max_blocks_per_seq` blocks of `block_size` tokens.
  // Unimplemented when the backend has no graphs (the model stays eager).
  virtual Status ReserveDecodeGraphs(int32_t max_batch, int32_t max_blocks_per_seq, int32_t block_size,
                                     const AttentionParams& params) {
    return UnimplementedError(std::string(name()) + " backend: no decode graphs");
  }
  // A decode batch (one token per sequence, token i of sequence i; rows past the real batch padded
  // with a negative slot) into the fixed buffers, validated against a cache of `num_kv_blocks`
  // blocks like Attention validates its metadata. meta.max_blocks_per_seq is the tables' width (at
  // most the reserved one); the inputs' addresses depend on (num_seqs, width), so a graph key must
  // determine both.
  virtual Status StageDecodeInputs(std::span<const int32_t> token_ids, const AttentionMetadata& meta,
                                   int64_t num_kv_blocks) {
    return UnimplementedError(std::string(name()) + " backend: no decode graphs");
  }
  // Runs the step: record() enqueues its ops (Embedding, RmsNorm, Linear, RopeAndWriteKv,
  // Attention, SiluMul, Copy), whose ids and metadata arguments must describe the staged batch.
  // With `capture`, the ops are recorded once per `key` into a graph that later calls replay
  // (record() not called); a key seen for the first time runs record() eagerly, then captures it.
  // Without `capture` every call runs record() eagerly on the staged inputs.
  virtual Status RunDecodeGraph(int32_t key, bool capture, const std::function<Status()>& record) {
    return UnimplementedError(std::string(name()) + " backend: no decode graphs");
  }
  // Drops every recorded graph (the buffers they read moved).
  virtual void ClearDecodeGraphs() {}

  // --- KV block transfer (disaggregated prefill/decode) ---------------------------------------------
  // One block of one layer's K (or V) is contiguous in the cache ([num_kv_heads, block_size,
  // head_dim]); the host buffer holds, layer by layer, K of every listed block then V of every
  // listed block: [num_layers][K|V][block_ids.size()][num_kv_heads][block_size][head_dim], so layer
  // l starts at l * 2 * block_ids.size() * block_bytes and is one contiguous chunk on the wire.
  // Synchronous with respect to the host. `host` must hold KvBlocksHostBytes(...) bytes.
  // Gathers `block_ids` of every layer of `layers` into `host`.
  virtual Status GatherKvBlocks(std::span<const KvLayerView> layers, std::span<const int32_t> block_ids,
                                void* host) {
    return UnimplementedError(std::string(name()) + " backend: GatherKvBlocks is not implemented");
  }
  // Writes `host` (laid out as above) into `block_ids` of every layer of `layers`.
  virtual Status ScatterKvBlocks(const void* host, std::span<const int32_t> block_ids,
                                 std::span<const KvLayerView> layers) {
    return UnimplementedError(std::string(name()) + " backend: ScatterKvBlocks is not implemented");
  }
  // The same from a buffer in this backend's memory (a GPU transport received the KV on the device).
  // Synchronous: `device_src` may be reused once it returns.
  virtual Status ScatterKvBlocksFromDevice(const void* device_src, std::span<const int32_t> block_ids,
                                           std::span<const KvLayerView> layers) {
    return UnimplementedError(std::string(name()) +
                              " backend: KV received in device memory cannot be written here");
  }

 protected:
  // Rows [begin, end) of `logits` through the host reference (the default SampleRows).
  Status SampleRowsOnHost(const Tensor& logits, size_t begin, size_t end,
                          std::span<const SampleInput> inputs, std::span<SampleOutput> outputs);

 private:
  // Host staging of the default SampleRows, reused between steps (engine thread only).
  std::vector<float> host_logits_;
  SamplerScratch host_sampler_scratch_;
};

// Bytes one block of one layer's K (or V) takes: num_kv_heads * block_size * head_dim * dtype size.
inline size_t KvBlockBytes(const KvLayerView& layer) {
  return layer.k.nbytes() / static_cast<size_t>(layer.k.dim(0));
}

// Bytes of the host buffer of Gather/ScatterKvBlocks for `num_blocks` blocks of every layer.
inline size_t KvBlocksHostBytes(std::span<const KvLayerView> layers, size_t num_blocks) {
  return layers.empty() ? 0 : 2 * layers.size() * num_blocks * KvBlockBytes(layers[0]);
}

}  // namespace tandem
