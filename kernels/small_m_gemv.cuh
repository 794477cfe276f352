// out[M, N] = x[M, K] @ weight[N, K]^T (+ bias[N]) for a handful of rows (M <= 4, the decode steps
// of small batches), where cuBLAS reaches 15-70% of HBM bandwidth on Llama-8B shapes. Memory bound:
// one warp per output column n streams weight row n once with 16-byte loads (8 in flight per
// lane) for all M rows of x (read through L1); the bias is added in the epilogue. bf16 or f32 out.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace tandem::kernels {

inline constexpr int64_t kSmallMGemvMaxRows = 4;

struct SmallMGemvParams {
  const __nv_bfloat16* x = nullptr;       // [m, k], 16-byte aligned
  const __nv_bfloat16* weight = nullptr;  // [n, k], 16-byte aligned
  const __nv_bfloat16* bias = nullptr;    // [n] or null
  void* out = nullptr;                    // [m, n], bf16 or f32
  bool out_is_f32 = false;
  int64_t m = 0, n = 0, k = 0;            // 1 <= m <= kSmallMGemvMaxRows, k % 8 == 0
};

// Whether the kernel takes this shape (row count, k a multiple of 8, 16-byte aligned operands).
bool SmallMGemvSupports(int64_t m, int64_t k, const void* x, const void* weight);

cudaError_t LaunchSmallMGemv(const SmallMGemvParams& params, cudaStream_t stream);

}  // namespace tandem::kernels
