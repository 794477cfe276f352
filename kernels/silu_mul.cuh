// out[r, i] = silu(gate_up[r, i]) * gate_up[r, inter + i]: the fused gate|up projection's
// activation, bf16 in and out with fp32 math.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace tandem::kernels {

struct SiluMulParams {
  const __nv_bfloat16* gate_up = nullptr;  // [rows, 2 * inter]
  __nv_bfloat16* out = nullptr;            // [rows, inter]
  int64_t rows = 0;
  int64_t inter = 0;
};

cudaError_t LaunchSiluMul(const SiluMulParams& params, cudaStream_t stream);

}  // namespace tandem::kernels
