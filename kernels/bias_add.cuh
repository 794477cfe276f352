// out[t, n] += bias[n] for a bf16 bias on a bf16 or f32 output (the bias of Linear).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace tandem::kernels {

struct BiasAddParams {
  void* out = nullptr;            // [rows, cols], bf16 (out_is_f32 false) or f32
  bool out_is_f32 = false;
  const __nv_bfloat16* bias = nullptr;  // [cols]
  int64_t rows = 0;
  int64_t cols = 0;
};

cudaError_t LaunchBiasAdd(const BiasAddParams& params, cudaStream_t stream);

}  // namespace tandem::kernels
