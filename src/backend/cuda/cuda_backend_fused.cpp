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
  const CudaBackendOptions constructed = options_;
  options_ = options;
  options_.device = constructed.device;
  options_.gpu_memory_utilization = constructed.gpu_memory_utilization;
  options_.cuda_core_decode_attention = constructed.cuda_core_decode_attention;
  options_.wgmma_prefill_attention = constructed.wgmma_prefill_attention;
  programmatic_launch_ = options_.programmatic_launch && sm90_;
}

Status CudaBackend::SmallMGemv(kernels::SmallMGemvParams p) {
  p.programmatic = programmatic_launch_;
  p.columns_per_warp = options_.small_m_gemv_columns_per_warp;
  p.streamed_max_rows = sm90_ ? options_.small_m_gemv_streamed_max_rows : 0;  // 227 KB of shared memory per CTA
  p.streamed_stage_x = options_.small_m_gemv_streamed_stage_x;
  p.streamed_prewait_segments = options_.small_m_gemv_streamed_prewait_segments;
  p.num_sms = num_sms_;
  TANDEM_CUDA_RETURN_IF_ERROR(kernels::LaunchSmallMGemv(p, stream_));
  return OkStatus();
}

bool CudaBackend::FusesSmallBatch(int64_t rows, std::span<const int64_t> k_dims) const {
  if (!options_.fuse_small_batch || rows < 1 || rows > kernels::kSmallMGemvMaxRows) return false;
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
