// CudaBackend: Backend on one NVIDIA GPU. bf16 activations, bf16 KV cache, bf16 weights in device
// memory (f32/f16 checkpoints converted on upload), fp32 accumulation everywhere; Linear through
// cuBLAS (up to 4 rows: the small-M GEMV kernel, bias fused), every other op a kernel from
// kernels/. Attention of a decode-only batch takes the split-KV decode kernel.
//
// Streams: one non-blocking stream per backend, created with it; every op is enqueued on it in
// call order and returns without waiting for the GPU. Only CopyToDevice, CopyToHost and
// Synchronize wait (for the stream). Per-step host inputs (token ids, gather rows, attention
// metadata) go through pinned staging buffers and one async copy each; the metadata is uploaded
// once per step and reused by every layer (see device_attention_metadata.h).
//
// Memory: Allocate() is cudaMalloc, owned by the returned DeviceBuffer. The backend itself owns the
// cuBLAS handle and workspace, and the grow-only staging/metadata buffers; nothing is allocated by
// an op except when a staging buffer must grow.
//
// Threading: driven by one thread at a time (the engine thread); every entry point selects the
// backend's device first, so that thread may change.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <memory>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend_factory.h"
#include "backend/cuda/decode_graphs.h"
#include "backend/cuda/device_attention_metadata.h"
#include "backend/cuda/grow_only_device_buffer.h"
#include "backend/cuda/pinned_upload.h"
#include "kernels/paged_decode_attention.cuh"
#include "kernels/small_m_gemv.cuh"

namespace tandem {

class CudaBackend final : public Backend {
 public:
  static StatusOr<std::unique_ptr<CudaBackend>> Create(const CudaBackendOptions& options);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string_view name() const override { return "cuda"; }
  DType activation_dtype() const override { return DType::kBF16; }
  DType kv_cache_dtype() const override { return DType::kBF16; }

  StatusOr<std::unique_ptr<DeviceBuffer>> Allocate(size_t bytes) override;
  StatusOr<Tensor> UploadWeight(const HostTensor& host,
                                std::unique_ptr<DeviceBuffer>* storage) override;
  Status CopyToDevice(const void* src, Tensor dst) override;
  Status CopyToHost(const Tensor& src, void* dst) override;
  Status Copy(const Tensor& src, Tensor dst) override;
  Status Synchronize() override;
  std::optional<int64_t> KvCacheBudgetBytes() const override;

  Status Embedding(std::span<const int32_t> ids, const Tensor& table, Tensor out) override;
  Status RmsNorm(const Tensor& x, Tensor residual, const Tensor& weight, float eps,
                 Tensor out) override;
  Status Linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor out) override;
  Status SiluMul(const Tensor& gate_up, Tensor out) override;
  Status RopeAndWriteKv(const Tensor& qkv, Tensor q_out, const RopeTables& rope,
                        const AttentionParams& params, const AttentionMetadata& meta,
                        KvLayerView cache) override;
  Status CheckSupported(const AttentionParams& params) const override;
  Status Attention(const Tensor& q, KvLayerView cache, const AttentionParams& params,
                   const AttentionMetadata& meta, Tensor out) override;
  // Decode-only batches on the tensor-core split-KV kernel (whole head rotated;
  // CudaBackendOptions::fuse_rope_decode_attention): one kernel rotates q, writes the new K/V and
  // attends (cuda_backend_decode_attention.cpp); q_scratch is not written. Otherwise the two ops.
  Status RopeWriteKvAttention(const Tensor& qkv, Tensor q_scratch, const RopeTables& rope,
                              const AttentionParams& params, const AttentionMetadata& meta, KvLayerView cache,
                              Tensor out) override;
  Status GatherRows(const Tensor& x, std::span<const int32_t> rows, Tensor out) override;
  // Fused small-batch ops (cuda_backend_fused.cpp): the small-M GEMV kernel with its RMSNorm
  // prologue and residual-add / SiLU·mul epilogues, for 1..4 rows (CudaBackendOptions::fuse_small_batch).
  bool FusesSmallBatch(int64_t rows, std::span<const int64_t> k_dims) const override;
  Status NormLinear(const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& weight, const Tensor& bias,
                    Tensor out) override;
  Status NormLinearSiluMul(const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& gate_up,
                           const Tensor& bias, Tensor out) override;
  Status LinearAddResidual(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor residual) override;
  // On the device (kernels/sample_rows.cuh): penalties, greedy or temperature/top-k/top-p/min-p
  // and the Philox draw, logprobs; only ids and logprobs are copied back. A batch with a row asking
  // for more than kernels::kMaxDeviceTopLogprobs top logprobs goes through the host reference
  // (Backend::SampleRows) as a whole.
  Status SampleRows(const Tensor& logits, std::span<const SampleInput> inputs,
                    std::span<SampleOutput> outputs) override;

  // KV block transfer (cuda_backend_kv.cpp): the cache's blocks through a device staging buffer and
  // one copy to or from the host; from a device buffer, a kernel per layer.
  Status GatherKvBlocks(std::span<const KvLayerView> layers, std::span<const int32_t> block_ids,
                        void* host) override;
  Status ScatterKvBlocks(const void* host, std::span<const int32_t> block_ids,
                         std::span<const KvLayerView> layers) override;
  Status ScatterKvBlocksFromDevice(const void* device_src, std::span<const int32_t> block_ids,
                                   std::span<const KvLayerView> layers) override;
  // Enqueues (no wait) the gather of one layer's listed blocks into `device_dst`
  // ([K|V][num_ids][block bytes]); `device_block_ids` must stay valid until the kernel ran.
  Status GatherKvLayerOnDevice(const KvLayerView& layer, const int32_t* device_block_ids,
                               int32_t num_ids, void* device_dst);
  // Decode graphs (decode_graphs.h): while a step runs inside RunDecodeGraph, Embedding,
  // RopeAndWriteKv and Attention read the staged inputs (fixed addresses) and upload nothing, and
  // Attention takes the split-KV decode kernel with a split count fixed per batch size.
  bool SupportsDecodeGraphs() const override { return true; }
  Status ReserveDecodeGraphs(int32_t max_batch, int32_t max_blocks_per_seq, int32_t block_size,
                             const AttentionParams& params) override;
  Status StageDecodeInputs(std::span<const int32_t> token_ids, const AttentionMetadata& meta,
                           int64_t num_kv_blocks) override;
  Status RunDecodeGraph(int32_t key, bool capture, const std::function<Status()>& record) override;
  void ClearDecodeGraphs() override;

  // Benchmarks: switches every kernel choice to that of `options` at run time — every field but
  // device, gpu_memory_utilization, cuda_core_decode_attention and wgmma_prefill_attention, which
  // stay as constructed. Drops every decode graph: the next steps capture anew.
  void SetKernelOptions(const CudaBackendOptions& options);
  // Edges of the last captured decode graph that are programmatic (PDL launches kept by the capture).
  size_t last_graph_programmatic_edges() const { return decode_graphs_.last_programmatic_edges(); }
  int device() const { return options_.device; }
  // Whether prefill attention goes through the wgmma kernel where it supports the shape.
  bool wgmma_prefill_attention() const { return wgmma_prefill_attention_; }
  cudaStream_t stream() const { return stream_; }

 private:
  explicit CudaBackend(const CudaBackendOptions& options)
      : options_(options) {}
  Status Init();
  Status SelectDevice() const;
  Status CheckAttentionParams(const AttentionParams& params, const KvLayerView& cache,
                              const AttentionMetadata& meta) const;
  // Tokens per attention work item: the tensor-core prefill kernel's tile where it supports the
  // shape, else the CUDA-core kernel's. RopeAndWriteKv and Attention plan with the same number, so
  // the metadata uploaded once per step is reused by both.
  static int32_t AttentionTileTokens(const AttentionParams& params);
  // The device view of a step's metadata: the staged decode inputs inside a decode graph step,
  // else uploaded (or reused) through attention_metadata_.
  StatusOr<DeviceAttentionView> AttentionView(const AttentionParams& params, const AttentionMetadata& meta,
                                              const KvLayerView& cache);
  // RopeAndWriteKv's operands (the checks the fused op shares), and its positions against the table.
  Status CheckRopeInputs(const Tensor& qkv, const RopeTables& rope, const AttentionParams& params,
                         const KvLayerView& cache, const AttentionMetadata& meta) const;
  static Status CheckRopePositions(const DeviceAttentionView& view, const RopeTables& rope);
  // The split-KV decode kernel (and so the split policy) this backend launches for a head dim.
  kernels::PagedDecodeKernel DecodeAttentionKernel(int32_t head_dim) const;
  // Whether the step's attention takes the split-KV decode kernel: one query per sequence (always,
  // inside a decode graph step) and a head shape it supports.
  bool IsDecodeOnly(const AttentionParams& params, const AttentionMetadata& meta) const;
  bool FusesRopeIntoDecodeAttention(const AttentionParams& params, const RopeTables& rope,
                                    const AttentionMetadata& meta) const;
  // Completes a split-KV decode launch whose tensors, tables and shape are filled (kernel, splits
  // for contexts up to `max_context`, workspace: the graph's inside a decode graph step, else the
  // grow-only eager one; small-batch choices) and enqueues it.
  Status LaunchDecodeAttention(kernels::PagedDecodeAttentionParams p, const AttentionParams& params,
                               int32_t max_context);
  // Split-KV decode attention over the staged inputs (inside a decode graph step).
  Status StagedDecodeAttention(const Tensor& q, KvLayerView cache, const AttentionParams& params, Tensor out);
  // Sets the small-batch choices (programmatic launch, in-kernel combine) of a split-KV decode
  // launch whose other fields are filled; nothing for batches over kernels::kSmallMGemvMaxRows.
  void SetSmallBatchDecodeAttention(kernels::PagedDecodeAttentionParams* p) const;
  // The small-M GEMV (fused variants included) on this backend's stream, PDL and the streamed
  // kernel as configured.
  Status SmallMGemv(kernels::SmallMGemvParams p);

  // As constructed, but for the kernel choices SetKernelOptions switches.
  CudaBackendOptions options_;
  bool programmatic_launch_ = false;  // options_.programmatic_launch and the device is sm_90+
  bool sm90_ = false;  // constant after Init
  bool wgmma_prefill_attention_ = false;  // requested and the device is compute capability 9.0 (sm_90a)
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  void* cublas_workspace_ = nullptr;

  PinnedUpload ids_upload_;
  PinnedUpload rows_upload_;
  DeviceAttentionMetadata attention_metadata_;
  std::vector<uint16_t> convert_scratch_;  // host bf16 conversion of f32/f16 weights
  int num_sms_ = 0;                        // constant after Init
  // Split-KV decode attention partial results (eager steps; graphs keep their own).
  GrowOnlyDeviceBuffer attention_partial_;
  // The in-kernel combine's counters (zero between launches; every launch leaves them zero), one
  // buffer for eager launches and graphs alike: fixed size and address from Init.
  static constexpr size_t kAttentionSplitCounters = 4096;
  int32_t* attention_split_counters_ = nullptr;
  // SampleRows: per-row inputs + penalty entries (one upload), a grow-only device result/scratch
  // buffer, and host buffers reused between steps.
  PinnedUpload sample_upload_;
  // KV block transfer: block ids, and the grow-only device staging of the host paths.
  PinnedUpload kv_ids_upload_;
  std::unique_ptr<DeviceBuffer> kv_staging_;
  GrowOnlyDeviceBuffer sample_device_;  // SampleRows' device results and scratch
  std::vector<std::byte> sample_staging_;
  std::vector<std::byte> sample_results_;
  std::vector<int32_t> sample_marks_;  // vocab-sized, all zero between calls
  std::vector<int32_t> sample_touched_;
  // Decode graphs: fixed inputs and workspace, graphs per padded batch size.
  DecodeGraphs decode_graphs_;
  int32_t graph_block_size_ = 0;  // constant after ReserveDecodeGraphs
};

}  // namespace tandem
