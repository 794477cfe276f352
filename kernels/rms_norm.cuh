// RMSNorm fused with the residual add, fp32 math on bf16 tensors:
//   residual given: residual = bf16(x + residual); out = bf16(weight * residual * rsqrt(mean(residual^2) + eps))
//   no residual:    out = bf16(weight * x * rsqrt(mean(x^2) + eps))
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace tandem::kernels {

struct RmsNormParams {
  const __nv_bfloat16* x = nullptr;   // [rows, hidden]
  __nv_bfloat16* residual = nullptr;  // [rows, hidden] or null
  const __nv_bfloat16* weight = nullptr;  // [hidden]
  __nv_bfloat16* out = nullptr;       // [rows, hidden]; may alias nothing above
  int64_t rows = 0;
  int64_t hidden = 0;
  float eps = 1e-6f;
};

cudaError_t LaunchRmsNorm(const RmsNormParams& params, cudaStream_t stream);

}  // namespace tandem::kernels
