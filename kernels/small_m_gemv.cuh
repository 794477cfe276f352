// out[M, N] = x[M, K] @ weight[N, K]^T (+ bias[N]) for a handful of rows (M <= 4, the decode steps
// of small batches), where cuBLAS reaches 15-70% of HBM bandwidth on Llama-8B shapes. Memory bound:
// each warp streams two weight rows (M = 1; M > 1 one, or two past one wave of CTAs) once with
// 16-byte loads, 8 in flight per lane, for all M rows of x (read through L1). Optional fusions, so
// that a decode layer needs no separate norm or activation kernel (CudaBackend::FusesSmallBatch):
//   - prologue `norm_weight`: x is the residual stream and the GEMV computes
//       (rmsnorm(x) * norm_weight) @ weight^T, i.e. inv_rms(x) * (x @ (weight * norm_weight)^T),
//     each warp summing x^2 over the row it reads anyway (no separate pass);
//   - epilogue kAddToOut: out (bf16) += result (the residual add of the o / down projections);
//   - epilogue kSiluMul: weight holds 2N rows (gate rows, then up rows), each warp streams gate row
//     n and up row n, and out[., n] = silu(gate) * up (the MLP activation; bias [2N]).
// Programmatic dependent launch (Hopper): with `programmatic`, the kernel is launched with
// programmatic stream serialization; each warp loads its first weights (immutable) before
// griddepcontrol.wait, so the weight stream starts while the previous kernel drains, and reads x /
// writes out only after the wait. Every CTA allows its dependents to launch at entry.
// With `streamed_max_rows` >= m, GEMVs of at most kStreamedGemvMaxRowsPerSm rows per SM go through
// kernels/streamed_gemv.cuh instead where it takes the shape (weights through shared memory, one
// CTA and an equal share of rows per SM).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace tandem::kernels {

inline constexpr int64_t kSmallMGemvMaxRows = 4;
inline constexpr int64_t kStreamedGemvMaxRowsPerSm = 256;
inline constexpr int kStreamedGemvTraceStamps = 5;  // SmallMGemvParams::trace

enum class SmallMGemvEpilogue {
  kStore,     // out = result (bf16 or f32)
  kAddToOut,  // out += result (bf16)
  kSiluMul,   // out = silu(result[gate]) * result[up] (bf16)
};

struct SmallMGemvParams {
  const __nv_bfloat16* x = nullptr;            // [m, k], 16-byte aligned
  const __nv_bfloat16* weight = nullptr;       // [n, k] ([2n, k] for kSiluMul), 16-byte aligned
  const __nv_bfloat16* bias = nullptr;         // [n] ([2n] for kSiluMul) or null
  const __nv_bfloat16* norm_weight = nullptr;  // [k], 16-byte aligned, or null: no norm prologue
  float eps = 1e-6f;                           // RMSNorm epsilon (with norm_weight)
  void* out = nullptr;                         // [m, n], bf16 or f32 (f32 only with kStore)
  bool out_is_f32 = false;
  SmallMGemvEpilogue epilogue = SmallMGemvEpilogue::kStore;
  bool programmatic = false;  // launch as a programmatic dependent (sm_90+)
  int64_t streamed_max_rows = 0;  // the streamed kernel for m <= this (0: never)
  // Streamed kernel, one row of x: x (times the norm weight, with a norm prologue) staged once per
  // CTA in shared memory as fp32 where it fits (kernels/streamed_gemv.cuh).
  bool streamed_stage_x = true;
  // Streamed kernel: ring slots each warp fills before the programmatic wait (0..3; the rest after
  // the residual and x are read); -1: 2 for shares of at most 4 segments a warp, else 3.
  int streamed_prewait_segments = -1;
  int columns_per_warp = 0;   // output columns per warp (kStore, kAddToOut): 1 or 2; 0 picks
  int num_sms = 0;            // the device's SMs (for that pick: one wave); 0: 132
  // Benchmarks only: the streamed kernel's CTAs write %globaltimer (ns) into
  // trace[cta * kStreamedGemvTraceStamps + i]: at entry, after the programmatic wait, with x
  // staged, after the last segment, after the rows.
  uint64_t* trace = nullptr;
  int64_t m = 0, n = 0, k = 0;  // 1 <= m <= kSmallMGemvMaxRows, k % 8 == 0
};

// Whether the kernel takes this shape (row count, k a multiple of 8, 16-byte aligned operands).
bool SmallMGemvSupports(int64_t m, int64_t k, const void* x, const void* weight);

// False for a shape SmallMGemvSupports refuses, a misaligned norm_weight, kAddToOut with a norm
// prologue, kSiluMul without one, an f32 output with an epilogue other than kStore, or
// columns_per_warp outside 0..2.
bool SmallMGemvParamsValid(const SmallMGemvParams& params);

// cudaErrorInvalidValue when !SmallMGemvParamsValid.
cudaError_t LaunchSmallMGemv(const SmallMGemvParams& params, cudaStream_t stream);

}  // namespace tandem::kernels
