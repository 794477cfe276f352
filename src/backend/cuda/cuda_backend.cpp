#include "backend/cuda/cuda_backend.h"

#include <algorithm>
#include <cstring>
#include <string>

#include <spdlog/spdlog.h>

#include "backend/cuda/attention_launch_params.h"
#include "backend/cuda/bf16_tensor.h"
#include "backend/cuda/cuda_check.h"
#include "common/half.h"
#include "kernels/bias_add.cuh"
#include "kernels/embedding.cuh"
#include "kernels/gather_rows.cuh"
#include "kernels/paged_attention.cuh"
#include "kernels/paged_decode_attention.cuh"
#include "kernels/paged_prefill_attention.cuh"
#include "kernels/paged_prefill_attention_wgmma.cuh"
#include "kernels/rms_norm.cuh"
#include "kernels/sample_rows.cuh"
#include "kernels/rope_write_kv.cuh"
#include "kernels/silu_mul.cuh"

namespace tandem {
namespace {

constexpr size_t kCublasWorkspaceBytes = 32u << 20;

class CudaBuffer final : public DeviceBuffer {
 public:
  CudaBuffer(int device, void* data, size_t size) : device_(device), data_(data), size_(size) {}
  ~CudaBuffer() override {
    // cudaFree waits for work using the memory; a failure here has nowhere to go but the log.
    int current = -1;
    if (cudaGetDevice(&current) == cudaSuccess && current != device_) (void)cudaSetDevice(device_);
    const cudaError_t err = cudaFree(data_);
    if (err != cudaSuccess) spdlog::warn("cuda backend: cudaFree failed: {}", cudaGetErrorString(err));
  }
  void* data() const override { return data_; }
  size_t size() const override { return size_; }

 private:
  int device_;
  void* data_;
  size_t size_;
};

// The launch parameters of the two work-item attention kernels (the tensor-core prefill kernel
// and the CUDA-core one), filled from one step's planned metadata.
kernels::PagedAttentionParams WorkItemAttentionParams(const Tensor& q, const KvLayerView& cache, const Tensor& out,
                                                      const DeviceAttentionView& view,
                                                      const AttentionParams& params,
                                                      const AttentionMetadata& meta) {
  auto p = PagedAttentionLaunchParams<kernels::PagedAttentionParams>(
      q, cache, out, view.block_tables, view.positions, meta.max_blocks_per_seq, meta.block_size, params);
  p.work_items = view.work_items;
  p.num_work_items = view.num_work_items;
  return p;
}

}  // namespace

int32_t CudaBackend::AttentionTileTokens(const AttentionParams& params) {
  const int32_t group = params.num_heads / params.num_kv_heads;
  return kernels::PagedPrefillAttentionSupports(params.head_dim, group)
             ? kernels::PagedPrefillAttentionTileTokens(group)
             : kernels::PagedAttentionTileTokens(group);
}

StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(const CudaBackendOptions& options) {
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<CudaBackend> backend, CudaBackend::Create(options));
  return std::unique_ptr<Backend>(std::move(backend));
}

StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(const CudaBackendOptions& options) {
  if (!(options.gpu_memory_utilization > 0.0 && options.gpu_memory_utilization <= 1.0)) {
    return InvalidArgumentError("gpu_memory_utilization must be in (0, 1], got " +
                                std::to_string(options.gpu_memory_utilization));
  }
  if (options.small_m_gemv_columns_per_warp < 0 || options.small_m_gemv_columns_per_warp > 2) {
    return InvalidArgumentError("cuda backend: small_m_gemv_columns_per_warp must be 0, 1 or 2, got " +
                                std::to_string(options.small_m_gemv_columns_per_warp));
  }
  if (options.small_m_gemv_streamed_prewait_segments < -1 || options.small_m_gemv_streamed_prewait_segments > 3) {
    return InvalidArgumentError("cuda backend: small_m_gemv_streamed_prewait_segments must be in [-1, 3], got " +
                                std::to_string(options.small_m_gemv_streamed_prewait_segments));
  }
  if (options.decode_attention_min_split_keys < 16 || options.decode_attention_min_split_keys > 4096 ||
      options.decode_attention_min_split_keys % 16 != 0) {
    return InvalidArgumentError("cuda backend: decode_attention_min_split_keys must be a multiple of 16 in [16, 4096], got " +
                                std::to_string(options.decode_attention_min_split_keys));
  }
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    return UnavailableError(std::string("cuda backend: no usable CUDA device (") +
                            (err != cudaSuccess ? cudaGetErrorString(err) : "none found") + ")");
  }
  if (options.device < 0 || options.device >= count) {
    return InvalidArgumentError("cuda backend: device " + std::to_string(options.device) +
                                " does not exist (" + std::to_string(count) + " visible)");
  }
  auto backend = std::unique_ptr<CudaBackend>(new CudaBackend(options));
  TANDEM_RETURN_IF_ERROR(backend->Init());
  return backend;
}

Status CudaBackend::Init() {
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  cudaDeviceProp prop{};
  TANDEM_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, options_.device));
  if (prop.major < 8) {
    return FailedPreconditionError("cuda backend: " + std::string(prop.name) + " has compute capability " +
                                   std::to_string(prop.major) + "." + std::to_string(prop.minor) +
                                   "; bf16 kernels need 8.0 or newer");
  }
  num_sms_ = prop.multiProcessorCount;
  sm90_ = prop.major >= 9;
  // The wgmma kernel is built for sm_90a, which runs on compute capability 9.0 alone.
  wgmma_prefill_attention_ = options_.wgmma_prefill_attention && prop.major == 9 && prop.minor == 0;
  programmatic_launch_ = options_.programmatic_launch && sm90_;
  TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  TANDEM_CUBLAS_RETURN_IF_ERROR(cublasCreate(&cublas_));
  TANDEM_CUBLAS_RETURN_IF_ERROR(cublasSetStream(cublas_, stream_));
  // An explicit workspace: cuBLAS allocates nothing while ops run (and graphs can capture later).
  TANDEM_CUDA_RETURN_IF_ERROR(cudaMalloc(&cublas_workspace_, kCublasWorkspaceBytes));
  TANDEM_CUBLAS_RETURN_IF_ERROR(cublasSetWorkspace(cublas_, cublas_workspace_, kCublasWorkspaceBytes));
  TANDEM_RETURN_IF_ERROR(ids_upload_.Init(stream_));
  TANDEM_RETURN_IF_ERROR(rows_upload_.Init(stream_));
  TANDEM_RETURN_IF_ERROR(sample_upload_.Init(stream_));
  TANDEM_RETURN_IF_ERROR(kv_ids_upload_.Init(stream_));
  TANDEM_RETURN_IF_ERROR(attention_metadata_.Init(stream_));
  TANDEM_CUDA_RETURN_IF_ERROR(
      cudaMalloc(reinterpret_cast<void**>(&attention_split_counters_), kAttentionSplitCounters * sizeof(int32_t)));
  TANDEM_CUDA_RETURN_IF_ERROR(cudaMemset(attention_split_counters_, 0, kAttentionSplitCounters * sizeof(int32_t)));
  spdlog::info("cuda backend: device {} ({}, {} SMs, {:.1f} GiB); small-batch fusion {}, programmatic launch {}, "
               "streamed GEMV up to {} rows, small-batch decode attention: programmatic {}, in-kernel combine {}; "
               "RoPE fused into decode attention {}, splits of >= {} keys; wgmma prefill attention {}",
               options_.device, prop.name, prop.multiProcessorCount, static_cast<double>(prop.totalGlobalMem) / (1 << 30),
               options_.fuse_small_batch ? "on" : "off", programmatic_launch_ ? "on" : "off", options_.small_m_gemv_streamed_max_rows,
               options_.programmatic_decode_attention && programmatic_launch_ ? "on" : "off",
               options_.decode_attention_combines_in_kernel ? "on" : "off", options_.fuse_rope_decode_attention ? "on" : "off",
               options_.decode_attention_min_split_keys,
               wgmma_prefill_attention_ ? "on" : "off");
  return OkStatus();
}

CudaBackend::~CudaBackend() {
  (void)cudaSetDevice(options_.device);
  if (stream_ != nullptr) (void)cudaStreamSynchronize(stream_);
  if (cublas_ != nullptr) (void)cublasDestroy(cublas_);
  if (cublas_workspace_ != nullptr) (void)cudaFree(cublas_workspace_);
  if (attention_split_counters_ != nullptr) (void)cudaFree(attention_split_counters_);
  if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
}

Status CudaBackend::SelectDevice() const {
  // cudaGetDevice first: cheap, and nothing device-wide happens inside a graph capture.
  int current = -1;
  if (cudaGetDevice(&current) == cudaSuccess && current == options_.device) return OkStatus();
  TANDEM_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  return OkStatus();
}

// --- memory ---------------------------------------------------------------------------------------

StatusOr<std::unique_ptr<DeviceBuffer>> CudaBackend::Allocate(size_t bytes) {
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, std::max<size_t>(bytes, 1));
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // allocation errors are not sticky: clear it
    return CudaErrorToStatus(err, "cuda backend: allocating " + std::to_string(bytes) + " bytes");
  }
  return std::unique_ptr<DeviceBuffer>(std::make_unique<CudaBuffer>(options_.device, p, bytes));
}

StatusOr<Tensor> CudaBackend::UploadWeight(const HostTensor& host,
                                           std::unique_ptr<DeviceBuffer>* storage) {
  if (host.dtype != DType::kF32 && host.dtype != DType::kBF16 && host.dtype != DType::kF16) {
    return InvalidArgumentError(host.source + ": tensor " + host.name + " has dtype " +
                                std::string(DTypeName(host.dtype)) +
                                "; the CUDA backend takes F32, BF16 or F16 weights");
  }
  if (host.shape.empty() || host.shape.size() > Tensor::kMaxDims) {
    return InvalidArgumentError(host.source + ": tensor " + host.name + " has rank " +
                                std::to_string(host.shape.size()));
  }
  Tensor t;
  t.dtype = DType::kBF16;
  t.ndim = static_cast<int>(host.shape.size());
  for (int i = 0; i < t.ndim; ++i) t.shape[i] = host.shape[i];
  TANDEM_ASSIGN_OR_RETURN(*storage, Allocate(t.nbytes()));
  t.data = (*storage)->data();
  const void* src = host.data;
  if (host.dtype != DType::kBF16) {
    const int64_t n = host.numel();
    convert_scratch_.resize(static_cast<size_t>(n));
    if (host.dtype == DType::kF32) {
      const float* f = reinterpret_cast<const float*>(host.data);
      for (int64_t i = 0; i < n; ++i) convert_scratch_[i] = F32ToBf16(f[i]);
    } else {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(host.data);
      for (int64_t i = 0; i < n; ++i) convert_scratch_[i] = F32ToBf16(F16ToF32(h[i]));
    }
    src = convert_scratch_.data();
  }
  TANDEM_RETURN_IF_ERROR(CopyToDevice(src, t));
  if (host.dtype != DType::kBF16) {
    convert_scratch_.clear();
    convert_scratch_.shrink_to_fit();
  }
  return t;
}

Status CudaBackend::CopyToDevice(const void* src, Tensor dst) {
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  TANDEM_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst.data, src, dst.nbytes(), cudaMemcpyHostToDevice, stream_));
  TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return OkStatus();
}

Status CudaBackend::CopyToHost(const Tensor& src, void* dst) {
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  TANDEM_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src.data, src.nbytes(), cudaMemcpyDeviceToHost, stream_));
  TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return OkStatus();
}

Status CudaBackend::Copy(const Tensor& src, Tensor dst) {
  TANDEM_CHECK_LE(src.nbytes(), dst.nbytes());
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  TANDEM_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst.data, src.data, src.nbytes(), cudaMemcpyDeviceToDevice, stream_));
  return OkStatus();
}

Status CudaBackend::Synchronize() {
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return OkStatus();
}

std::optional<int64_t> CudaBackend::KvCacheBudgetBytes() const {
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaSetDevice(options_.device) != cudaSuccess || cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    spdlog::warn("cuda backend: cudaMemGetInfo failed; the KV cache falls back to kv_cache_bytes");
    return std::nullopt;
  }
  const double used = static_cast<double>(total_bytes - free_bytes);
  const double budget = options_.gpu_memory_utilization * static_cast<double>(total_bytes) - used;
  return std::max<int64_t>(0, static_cast<int64_t>(budget));
}

// --- ops ------------------------------------------------------------------------------------------

Status CudaBackend::Embedding(std::span<const int32_t> ids, const Tensor& table, Tensor out) {
  CheckBf16(table, "embedding table");
  CheckBf16(out, "embedding output");
  TANDEM_CHECK_EQ(out.dim(1), table.dim(1));
  for (size_t t = 0; t < ids.size(); ++t) {
    TANDEM_CHECK(ids[t] >= 0 && ids[t] < table.dim(0)) << "token id " << ids[t];
  }
  if (ids.empty()) return OkStatus();
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  kernels::EmbeddingParams p;
  if (decode_graphs_.active()) {
    // A decode graph step: the ids were staged with the batch.
    TANDEM_CHECK_EQ(static_cast<int64_t>(ids.size()), decode_graphs_.staged().num_seqs);
    p.ids = decode_graphs_.staged().token_ids;
  } else {
    TANDEM_RETURN_IF_ERROR(ids_upload_.Upload(ids.data(), ids.size_bytes(), /*reuse_if_same=*/false));
    p.ids = static_cast<const int32_t*>(ids_upload_.device());
  }
  p.table = Bf16(table);
  p.out = Bf16(out);
  p.num_tokens = static_cast<int32_t>(ids.size());
  p.hidden = table.dim(1);
  TANDEM_CUDA_RETURN_IF_ERROR(kernels::LaunchEmbedding(p, stream_));
  return OkStatus();
}

Status CudaBackend::RmsNorm(const Tensor& x, Tensor residual, const Tensor& weight, float eps,
                            Tensor out) {
  CheckBf16(x, "rmsnorm input");
  CheckBf16(weight, "rmsnorm weight");
  CheckBf16(out, "rmsnorm output");
  if (!residual.empty()) CheckBf16(residual, "rmsnorm residual");
  TANDEM_CHECK_EQ(weight.numel(), x.dim(-1));
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  kernels::RmsNormParams p;
  p.x = Bf16(x);
  p.residual = residual.empty() ? nullptr : Bf16(residual);
  p.weight = Bf16(weight);
  p.out = Bf16(out);
  p.hidden = x.dim(-1);
  p.rows = x.numel() / p.hidden;
  p.eps = eps;
  TANDEM_CUDA_RETURN_IF_ERROR(kernels::LaunchRmsNorm(p, stream_));
  return OkStatus();
}

Status CudaBackend::Linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor out) {
  CheckBf16(x, "linear input");
  CheckBf16(weight, "linear weight");
  TANDEM_CHECK(out.dtype == DType::kBF16 || out.dtype == DType::kF32)
      << "linear output must be bf16 or f32, got " << DTypeName(out.dtype);
  const int64_t k = x.dim(-1);
  const int64_t rows = x.numel() / k;
  const int64_t n = weight.dim(0);
  TANDEM_CHECK_EQ(weight.dim(1), k);
  TANDEM_CHECK_EQ(out.numel(), rows * n);
  if (rows == 0) return OkStatus();
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  if (!bias.empty()) {
    CheckBf16(bias, "linear bias");
    TANDEM_CHECK_EQ(bias.numel(), n);
  }
  // A few rows (small decode batches): the bandwidth-bound GEMV kernel, bias in its epilogue.
  if (kernels::SmallMGemvSupports(rows, k, x.data, weight.data)) {
    kernels::SmallMGemvParams p;
    p.x = Bf16(x);
    p.weight = Bf16(weight);
    p.bias = bias.empty() ? nullptr : Bf16(bias);
    p.out = out.data;
    p.out_is_f32 = out.dtype == DType::kF32;
    p.m = rows;
    p.n = n;
    p.k = k;
    return SmallMGemv(p);
  }
  // Row-major out[rows, n] = x[rows, k] @ W[n, k]^T is column-major out^T[n, rows] = W^T' x^T'
  // with W read as a column-major [k, n] matrix (transposed) and x as column-major [k, rows].
  const float alpha = 1.0f, beta = 0.0f;
  const cudaDataType_t out_type = out.dtype == DType::kF32 ? CUDA_R_32F : CUDA_R_16BF;
  TANDEM_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(
      cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(rows), static_cast<int>(k),
      &alpha, weight.data, CUDA_R_16BF, static_cast<int>(k), x.data, CUDA_R_16BF, static_cast<int>(k),
      &beta, out.data, out_type, static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  if (!bias.empty()) {
    kernels::BiasAddParams p;
    p.out = out.data;
    p.out_is_f32 = out.dtype == DType::kF32;
    p.bias = Bf16(bias);
    p.rows = rows;
    p.cols = n;
    TANDEM_CUDA_RETURN_IF_ERROR(kernels::LaunchBiasAdd(p, stream_));
  }
  return OkStatus();
}

Status CudaBackend::SiluMul(const Tensor& gate_up, Tensor out) {
  CheckBf16(gate_up, "silu gate_up");
  CheckBf16(out, "silu output");
  const int64_t rows = gate_up.dim(0);
  TANDEM_CHECK_EQ(gate_up.numel(), 2 * out.numel());
  TANDEM_CHECK_EQ(out.dim(0), rows);
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  kernels::SiluMulParams p;
  p.gate_up = Bf16(gate_up);
  p.out = Bf16(out);
  p.rows = rows;
  p.inter = rows == 0 ? 0 : out.numel() / rows;
  TANDEM_CUDA_RETURN_IF_ERROR(kernels::LaunchSiluMul(p, stream_));
  return OkStatus();
}

Status CudaBackend::CheckSupported(const AttentionParams& params) const {
  if (!kernels::PagedAttentionSupportsHeadDim(params.head_dim)) {
    return UnimplementedError("cuda backend: head_dim " + std::to_string(params.head_dim) +
                              " is not compiled into the attention kernel (supported: 32, 64, 80, 96, 128, 256)");
  }
  if (params.num_kv_heads <= 0 || params.num_heads % params.num_kv_heads != 0) {
    return InvalidArgumentError("cuda backend: num_heads " + std::to_string(params.num_heads) +
                                " is not a multiple of num_kv_heads " + std::to_string(params.num_kv_heads));
  }
  return OkStatus();
}

Status CudaBackend::CheckAttentionParams(const AttentionParams& params, const KvLayerView& cache,
                                         const AttentionMetadata& meta) const {
  TANDEM_RETURN_IF_ERROR(CheckSupported(params));
  CheckBf16(cache.k, "KV cache");
  CheckBf16(cache.v, "KV cache");
  TANDEM_CHECK_EQ(cache.k.ndim, 4);
  TANDEM_CHECK_EQ(cache.k.dim(1), params.num_kv_heads);
  TANDEM_CHECK_EQ(cache.k.dim(2), meta.block_size);
  TANDEM_CHECK_EQ(cache.k.dim(3), params.head_dim);
  return OkStatus();
}

Status CudaBackend::CheckRopeInputs(const Tensor& qkv, const RopeTables& rope, const AttentionParams& params,
                                    const KvLayerView& cache, const AttentionMetadata& meta) const {
  TANDEM_RETURN_IF_ERROR(CheckAttentionParams(params, cache, meta));
  CheckBf16(qkv, "qkv");
  TANDEM_CHECK_EQ(qkv.numel(), static_cast<int64_t>(meta.num_tokens) *
                                   (params.num_heads + 2 * params.num_kv_heads) * params.head_dim);
  TANDEM_CHECK(rope.cos.dtype == DType::kF32 && rope.sin.dtype == DType::kF32);
  TANDEM_CHECK(rope.rotary_dim > 0 && rope.rotary_dim <= params.head_dim && rope.rotary_dim % 2 == 0);
  TANDEM_CHECK_EQ(rope.cos.dim(1), rope.rotary_dim / 2);
  return OkStatus();
}

Status CudaBackend::CheckRopePositions(const DeviceAttentionView& view, const RopeTables& rope) {
  if (view.max_position >= rope.cos.dim(0)) {
    return OutOfRangeError("cuda backend: position " + std::to_string(view.max_position) +
                           " beyond the rope table of " + std::to_string(rope.cos.dim(0)) + " positions");
  }
  return OkStatus();
}

Status CudaBackend::RopeAndWriteKv(const Tensor& qkv, Tensor q_out, const RopeTables& rope,
                                   const AttentionParams& params, const AttentionMetadata& meta,
                                   KvLayerView cache) {
  TANDEM_RETURN_IF_ERROR(CheckRopeInputs(qkv, rope, params, cache, meta));
  CheckBf16(q_out, "q");
  TANDEM_CHECK_GE(q_out.numel(), static_cast<int64_t>(meta.num_tokens) * params.num_heads * params.head_dim);
  if (meta.num_tokens == 0) return OkStatus();
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  TANDEM_ASSIGN_OR_RETURN(DeviceAttentionView view, AttentionView(params, meta, cache));
  TANDEM_RETURN_IF_ERROR(CheckRopePositions(view, rope));
  kernels::RopeWriteKvParams p;
  p.qkv = Bf16(qkv);
  p.q_out = Bf16(q_out);
  p.k_cache = Bf16(cache.k);
  p.v_cache = Bf16(cache.v);
  p.cos = rope.cos.as<const float>();
  p.sin = rope.sin.as<const float>();
  p.positions = view.positions;
  p.slot_mapping = view.slot_mapping;
  p.num_tokens = meta.num_tokens;
  p.num_heads = params.num_heads;
  p.num_kv_heads = params.num_kv_heads;
  p.head_dim = params.head_dim;
  p.rotary_dim = rope.rotary_dim;
  p.block_size = meta.block_size;
  // Programmatic only after the small-M GEMV (larger batches: after cuBLAS, measured no gain).
  p.programmatic = programmatic_launch_ && meta.num_tokens <= kernels::kSmallMGemvMaxRows;
  TANDEM_CUDA_RETURN_IF_ERROR(kernels::LaunchRopeWriteKv(p, stream_));
  return OkStatus();
}

Status CudaBackend::Attention(const Tensor& q, KvLayerView cache, const AttentionParams& params,
                              const AttentionMetadata& meta, Tensor out) {
  TANDEM_RETURN_IF_ERROR(CheckAttentionParams(params, cache, meta));
  CheckBf16(q, "q");
  CheckBf16(out, "attention output");
  if (meta.num_tokens == 0) return OkStatus();
  if (decode_graphs_.active()) return StagedDecodeAttention(q, cache, params, out);
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  const int32_t group = params.num_heads / params.num_kv_heads;
  TANDEM_ASSIGN_OR_RETURN(DeviceAttentionView view,
                          attention_metadata_.Prepare(meta, AttentionTileTokens(params), cache.k.dim(0)));
  // Decode-only batch (one query per sequence, token i of sequence i): split-KV decode kernel.
  if (IsDecodeOnly(params, meta)) {
    auto p = PagedAttentionLaunchParams<kernels::PagedDecodeAttentionParams>(
        q, cache, out, view.block_tables, view.positions, meta.max_blocks_per_seq, meta.block_size, params);
    p.num_seqs = meta.num_seqs;
    return LaunchDecodeAttention(p, params, view.max_position + 1);
  }
  if (wgmma_prefill_attention_ && kernels::PagedPrefillAttentionWgmmaSupports(params.head_dim, group)) {
    TANDEM_CUDA_RETURN_IF_ERROR(kernels::LaunchPagedPrefillAttentionWgmma(
        WorkItemAttentionParams(q, cache, out, view, params, meta), stream_));
    return OkStatus();
  }
  if (kernels::PagedPrefillAttentionSupports(params.head_dim, group)) {
    TANDEM_CUDA_RETURN_IF_ERROR(kernels::LaunchPagedPrefillAttention(
        WorkItemAttentionParams(q, cache, out, view, params, meta), stream_));
    return OkStatus();
  }
  TANDEM_CUDA_RETURN_IF_ERROR(kernels::LaunchPagedAttention(
      WorkItemAttentionParams(q, cache, out, view, params, meta), stream_));
  return OkStatus();
}

Status CudaBackend::GatherRows(const Tensor& x, std::span<const int32_t> rows, Tensor out) {
  for (int32_t r : rows) TANDEM_CHECK(r >= 0 && r < x.dim(0)) << "row " << r;
  if (rows.empty()) return OkStatus();
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  // The model gathers the same rows from two tensors in a row: the second call reuses the upload.
  TANDEM_RETURN_IF_ERROR(rows_upload_.Upload(rows.data(), rows.size_bytes(), /*reuse_if_same=*/true));
  kernels::GatherRowsParams p;
  p.x = x.data;
  p.rows = static_cast<const int32_t*>(rows_upload_.device());
  p.out = out.data;
  p.num_rows = static_cast<int32_t>(rows.size());
  p.row_bytes = static_cast<int64_t>(x.nbytes() / static_cast<size_t>(x.dim(0)));
  TANDEM_CUDA_RETURN_IF_ERROR(kernels::LaunchGatherRows(p, stream_));
  return OkStatus();
}

Status CudaBackend::SampleRows(const Tensor& logits, std::span<const SampleInput> inputs,
                               std::span<SampleOutput> outputs) {
  TANDEM_CHECK_EQ(inputs.size(), outputs.size());
  TANDEM_CHECK(logits.dtype == DType::kF32 && logits.ndim == 2) << "logits must be f32 [R, V]";
  TANDEM_CHECK_EQ(static_cast<size_t>(logits.dim(0)), inputs.size());
  if (inputs.empty()) return OkStatus();
  for (const SampleInput& in : inputs) {
    TANDEM_CHECK(in.params != nullptr) << "SampleInput.params is required";
    if (in.params->logprobs > kernels::kMaxDeviceTopLogprobs) {
      return Backend::SampleRows(logits, inputs, outputs);
    }
  }
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  const int32_t num_rows = static_cast<int32_t>(inputs.size());
  const int32_t vocab = static_cast<int32_t>(logits.dim(1));

  // Host side: the row's Philox uniform (the same function as SampleToken's draw) and the unique
  // penalized tokens with their output counts (SampleToken's
  // ApplyPenalties bookkeeping), staged as [rows][entries].
  std::vector<kernels::SampleRowInput> rows(inputs.size());
  std::vector<kernels::PenaltyEntry> entries;
  if (sample_marks_.size() != static_cast<size_t>(vocab)) sample_marks_.assign(static_cast<size_t>(vocab), 0);
  bool any_top = false;
  for (size_t r = 0; r < inputs.size(); ++r) {
    const SamplingParams& sp = *inputs[r].params;
    kernels::SampleRowInput& row = rows[r];
    row.temperature = sp.temperature;
    row.top_k = sp.top_k;
    row.top_p = sp.top_p;
    row.min_p = sp.min_p;
    row.uniform = sp.temperature == 0.0f ? 0.0f : PhiloxUniform(inputs[r].seed, inputs[r].step);
    row.repetition_penalty = sp.repetition_penalty;
    row.presence_penalty = sp.presence_penalty;
    row.frequency_penalty = sp.frequency_penalty;
    row.num_logprobs = sp.logprobs < 0 ? -1 : sp.logprobs;
    any_top = any_top || sp.logprobs > 0;
    row.penalty_begin = static_cast<int32_t>(entries.size());
    const bool repetition = sp.repetition_penalty != 1.0f;
    const bool additive = sp.presence_penalty != 0.0f || sp.frequency_penalty != 0.0f;
    if (repetition || additive) {
      sample_touched_.clear();
      auto mark = [&](TokenId id, int32_t add) {
        TANDEM_CHECK(id >= 0 && id < vocab) << "token id " << id << " outside the vocabulary of "
                                            << vocab << " (ids must be validated at admission)";
        if (sample_marks_[id] == 0) sample_touched_.push_back(id);
        sample_marks_[id] = (sample_marks_[id] | 1) + add;
      };
      if (repetition) {
        for (TokenId id : inputs[r].prompt_tokens) mark(id, 0);
      }
      for (TokenId id : inputs[r].output_tokens) mark(id, 2);
      for (TokenId id : sample_touched_) {
        entries.push_back({id, sample_marks_[id] >> 1});
        sample_marks_[id] = 0;
      }
    }
    row.penalty_end = static_cast<int32_t>(entries.size());
  }

  const size_t rows_bytes = rows.size() * sizeof(kernels::SampleRowInput);
  const size_t entries_bytes = entries.size() * sizeof(kernels::PenaltyEntry);
  TANDEM_ASSIGN_OR_RETURN(std::byte* staged, sample_upload_.BeginWrite(rows_bytes + entries_bytes));
  std::memcpy(staged, rows.data(), rows_bytes);
  if (entries_bytes > 0) std::memcpy(staged + rows_bytes, entries.data(), entries_bytes);
  TANDEM_RETURN_IF_ERROR(sample_upload_.Commit(rows_bytes + entries_bytes));

  // Device results: [tokens R][logprobs R][top tokens R x N][top logprobs R x N][raw E].
  const size_t n = static_cast<size_t>(num_rows);
  const size_t top = n * kernels::kMaxDeviceTopLogprobs;
  const size_t result_bytes = n * 8 + (any_top ? top * 8 : 0);
  const size_t device_bytes = n * 8 + top * 8 + entries.size() * sizeof(float);
  TANDEM_RETURN_IF_ERROR(sample_device_.Reserve(device_bytes, stream_));
  std::byte* const results = sample_device_.data();
  kernels::SampleRowsParams p;
  p.logits = logits.as<float>();
  p.num_rows = num_rows;
  p.vocab = vocab;
  p.rows = static_cast<const kernels::SampleRowInput*>(sample_upload_.device());
  p.penalties = reinterpret_cast<const kernels::PenaltyEntry*>(
      static_cast<const std::byte*>(sample_upload_.device()) + rows_bytes);
  p.out_token = reinterpret_cast<int32_t*>(results);
  p.out_logprob = reinterpret_cast<float*>(results + n * 4);
  p.out_top_token = reinterpret_cast<int32_t*>(results + n * 8);
  p.out_top_logprob = reinterpret_cast<float*>(results + n * 8 + top * 4);
  p.penalty_raw = reinterpret_cast<float*>(results + n * 8 + top * 8);
  TANDEM_CUDA_RETURN_IF_ERROR(kernels::LaunchSampleRows(p, stream_));
  sample_results_.resize(result_bytes);
  TANDEM_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(sample_results_.data(), results, result_bytes, cudaMemcpyDeviceToHost, stream_));
  TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));

  const auto* tokens = reinterpret_cast<const int32_t*>(sample_results_.data());
  const auto* logprobs = reinterpret_cast<const float*>(sample_results_.data() + n * 4);
  const auto* top_tokens = reinterpret_cast<const int32_t*>(sample_results_.data() + n * 8);
  const auto* top_logprobs = reinterpret_cast<const float*>(sample_results_.data() + n * 8 + top * 4);
  for (size_t r = 0; r < n; ++r) {
    SampleOutput& out = outputs[r];
    out.token = tokens[r];
    out.logprob = rows[r].num_logprobs >= 0 ? logprobs[r] : 0.0f;
    out.top_logprobs.clear();
    const int32_t count = std::min(rows[r].num_logprobs, vocab);
    for (int32_t j = 0; j < count; ++j) {
      const size_t o = r * kernels::kMaxDeviceTopLogprobs + static_cast<size_t>(j);
      out.top_logprobs.push_back({top_tokens[o], top_logprobs[o]});
    }
  }
  return OkStatus();
}

}  // namespace tandem
