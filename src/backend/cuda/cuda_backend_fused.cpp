// CudaBackend: the fused small-batch ops (Backend::FusesSmallBatch) and the small-M GEMV launch
// they share with Linear.
#include "backend/cuda/bf16_tensor.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"

namespace tandem {
namespace {

// The GEMV's operands for x [rows, k] @ weight [n_rows, k]^T; checks every shape the fused ops share.
kernels::SmallMGemvParams GemvOperands(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  CheckBf16(x, "fused op input");
  CheckBf16(weight, "fused op weight");
  const int64_t k = x.dim(-1);
  TANDEM_CHECK_EQ(weight.dim(1), k);
  if (!bias.empty()) {
    CheckBf16(bias, "fused op bias");
    TANDEM_CHECK_EQ(bias.numel(), weight.dim(0));
  }
  kernels::SmallMGemvParams p;
  p.x = Bf16(x);
  p.weight = Bf16(weight);
  p.bias = bias.empty() ? nullptr : Bf16(bias);
  p.m = x.numel() / k;
  p.k = k;
  TANDEM_CHECK(kernels::SmallMGemvSupports(p.m, p.k, p.x, p.weight))
      << "fused small-batch op on " << p.m << " rows of " << k << " (FusesSmallBatch said no)";
  return p;
}

}  // namespace

void CudaBackend::SetKernelOptions(const CudaBackendOptions& options) {
  ClearDecodeGraphs();
  fuse_small_batch_ = options.fuse_small_batch;
  programmatic_launch_requested_ = options.programmatic_launch;
  programmatic_launch_ = options.programmatic_launch && sm90_;
  small_m_gemv_columns_per_warp_ = options.small_m_gemv_columns_per_warp;
  small_m_gemv_streamed_max_rows_ = options.small_m_gemv_streamed_max_rows;
  small_m_gemv_streamed_stage_x_ = options.small_m_gemv_streamed_stage_x;
  small_m_gemv_streamed_prewait_segments_ = options.small_m_gemv_streamed_prewait_segments;
  programmatic_decode_attention_ = options.programmatic_decode_attention;
  decode_attention_combines_in_kernel_ = options.decode_attention_combines_in_kernel;
  fuse_rope_decode_attention_ = options.fuse_rope_decode_attention;
  decode_attention_min_split_keys_ = options.decode_attention_min_split_keys;
}

Status CudaBackend::SmallMGemv(kernels::SmallMGemvParams p) {
  p.programmatic = programmatic_launch_;
  p.columns_per_warp = small_m_gemv_columns_per_warp_;
  p.streamed_max_rows = sm90_ ? small_m_gemv_streamed_max_rows_ : 0;  // 227 KB of shared memory per CTA
  p.streamed_stage_x = small_m_gemv_streamed_stage_x_;
  p.streamed_prewait_segments = small_m_gemv_streamed_prewait_segments_;
  p.num_sms = num_sms_;
  TANDEM_CUDA_RETURN_IF_ERROR(kernels::LaunchSmallMGemv(p, stream_));
  return OkStatus();
}

bool CudaBackend::FusesSmallBatch(int64_t rows, std::span<const int64_t> k_dims) const {
  if (!fuse_small_batch_ || rows < 1 || rows > kernels::kSmallMGemvMaxRows) return false;
  // Rows of x start 16-byte aligned (the workspace's tensors are cudaMalloc'd) when k % 8 == 0.
  for (int64_t k : k_dims) {
    if (k <= 0 || k % 8 != 0) return false;
  }
  return true;
}

Status CudaBackend::NormLinear(const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& weight,
                               const Tensor& bias, Tensor out) {
  kernels::SmallMGemvParams p = GemvOperands(x, weight, bias);
  CheckBf16(norm_weight, "norm weight");
  TANDEM_CHECK_EQ(norm_weight.numel(), p.k);
  TANDEM_CHECK(out.dtype == DType::kBF16 || out.dtype == DType::kF32)
      << "NormLinear output must be bf16 or f32, got " << DTypeName(out.dtype);
  p.n = weight.dim(0);
  TANDEM_CHECK_EQ(out.numel(), p.m * p.n);
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  p.norm_weight = Bf16(norm_weight);
  p.eps = eps;
  p.out = out.data;
  p.out_is_f32 = out.dtype == DType::kF32;
  return SmallMGemv(p);
}

Status CudaBackend::NormLinearSiluMul(const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& gate_up,
                                      const Tensor& bias, Tensor out) {
  kernels::SmallMGemvParams p = GemvOperands(x, gate_up, bias);
  CheckBf16(norm_weight, "norm weight");
  CheckBf16(out, "NormLinearSiluMul output");
  TANDEM_CHECK_EQ(norm_weight.numel(), p.k);
  TANDEM_CHECK_EQ(gate_up.dim(0) % 2, 0);
  p.n = gate_up.dim(0) / 2;
  TANDEM_CHECK_EQ(out.numel(), p.m * p.n);
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  p.norm_weight = Bf16(norm_weight);
  p.eps = eps;
  p.out = out.data;
  p.epilogue = kernels::SmallMGemvEpilogue::kSiluMul;
  return SmallMGemv(p);
}

Status CudaBackend::LinearAddResidual(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor residual) {
  kernels::SmallMGemvParams p = GemvOperands(x, weight, bias);
  CheckBf16(residual, "residual");
  p.n = weight.dim(0);
  TANDEM_CHECK_EQ(residual.numel(), p.m * p.n);
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  p.out = residual.data;
  p.epilogue = kernels::SmallMGemvEpilogue::kAddToOut;
  return SmallMGemv(p);
}

}  // namespace tandem
