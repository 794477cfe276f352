// out = silu(gate) * up, elementwise on bf16 tensors with fp32 math.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace tandem::kernels {

struct SiluMulParams {
  const __nv_bfloat16* gate = nullptr;
  const __nv_bfloat16* up = nullptr;
  __nv_bfloat16* out = nullptr;
  int64_t n = 0;  // elements
};

cudaError_t LaunchSiluMul(const SiluMulParams& params, cudaStream_t stream);

}  // namespace tandem::kernels
