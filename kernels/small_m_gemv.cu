#include "kernels/small_m_gemv.cuh"

#include "kernels/kernel_utils.cuh"
#include "kernels/streamed_gemv.cuh"

namespace tandem::kernels {
namespace {

constexpr int kWarps = 4;

// CTAs of 4 warps per SM the kernel is compiled for: one row of x in at most 64 registers (8 CTAs,
// so that a 4096-column GEMV runs as one wave); more rows in at most 102 (5 CTAs, no spills).
constexpr int MinBlocksPerSm(int m) { return m == 1 ? 8 : 5; }

// Each warp streams kRows weight rows once, kUnroll 16-byte loads in flight per lane and row:
// kSiluMul: gate row `unit` and up row n + unit for output column `unit`; otherwise kRows
// adjacent output columns kRows * unit + j (LaunchShape picks kRows).
template <int kM, int kUnroll, int kRows, bool kNorm, SmallMGemvEpilogue kEpilogue, typename Out>
__global__ void __launch_bounds__(kWarps * 32, MinBlocksPerSm(kM)) SmallMGemvKernel(const SmallMGemvParams p) {
  constexpr bool kSilu = kEpilogue == SmallMGemvEpilogue::kSiluMul;
  static_assert(!kSilu || kRows == 2);
  AllowDependentLaunch();
  const int lane = threadIdx.x & 31;
  const int64_t unit = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t col = kSilu ? unit : unit * kRows;  // first output column of the warp
  const bool active = col < p.n;  // warp-uniform
  const int64_t chunks = p.k / 8;  // 16-byte chunks per row
  const uint4* w[kRows];
#pragma unroll
  for (int j = 0; j < kRows; ++j) {
    // A column past n (odd n, two per warp) re-reads the warp's first row and is not stored.
    const int64_t row = kSilu ? unit + j * p.n : (col + j < p.n ? col + j : col);
    w[j] = reinterpret_cast<const uint4*>(p.weight + row * p.k);
  }
  uint4 wv[kUnroll][kRows];
  auto load_weights = [&](int64_t c0) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + 32 * u;
#pragma unroll
      for (int j = 0; j < kRows; ++j) wv[u][j] = c < chunks ? __ldcs(w[j] + c) : make_uint4(0, 0, 0, 0);
    }
  };
  // The first weights are immutable: they stream in while an earlier kernel may still be running.
  if (active) load_weights(lane);
  WaitForPrerequisiteGrids();
  if (!active) return;

  const uint4* x = reinterpret_cast<const uint4*>(p.x);
  const uint4* g = reinterpret_cast<const uint4*>(p.norm_weight);
  float acc[kRows][kM];
  float sum_sq[kM];
#pragma unroll
  for (int r = 0; r < kM; ++r) {
    sum_sq[r] = 0.0f;
#pragma unroll
    for (int j = 0; j < kRows; ++j) acc[j][r] = 0.0f;
  }
  for (int64_t c0 = lane; c0 < chunks; c0 += 32 * kUnroll) {
    if (c0 != lane) load_weights(c0);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + 32 * u;
      if (c < chunks) {
        float wf[kRows][8];
#pragma unroll
        for (int j = 0; j < kRows; ++j) Bf16x8ToFloat(wv[u][j], wf[j]);
        if constexpr (kNorm) {
          // (x * inv_rms * g) . w == inv_rms * (x . (w * g)): scale the weights here, inv_rms at the end.
          float gf[8];
          Bf16x8ToFloat(__ldg(g + c), gf);
#pragma unroll
          for (int j = 0; j < kRows; ++j) {
#pragma unroll
            for (int i = 0; i < 8; ++i) wf[j][i] *= gf[i];
          }
        }
#pragma unroll
        for (int r = 0; r < kM; ++r) {
          float xf[8];
          Bf16x8ToFloat(__ldg(x + r * chunks + c), xf);
#pragma unroll
          for (int i = 0; i < 8; ++i) {
#pragma unroll
            for (int j = 0; j < kRows; ++j) acc[j][r] = fmaf(wf[j][i], xf[i], acc[j][r]);
            if constexpr (kNorm) sum_sq[r] = fmaf(xf[i], xf[i], sum_sq[r]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kM; ++r) {
#pragma unroll
    for (int j = 0; j < kRows; ++j) acc[j][r] = WarpSum(acc[j][r]);
    if constexpr (kNorm) sum_sq[r] = WarpSum(sum_sq[r]);
  }
  // Lane r writes row r.
#pragma unroll
  for (int r = 0; r < kM; ++r) {
    if (lane != r) continue;
    const float scale = kNorm ? rsqrtf(sum_sq[r] / static_cast<float>(p.k) + p.eps) : 1.0f;
    Out* out = static_cast<Out*>(p.out) + r * p.n + col;
    if constexpr (kSilu) {
      const float gate = acc[0][r] * scale + (p.bias != nullptr ? __bfloat162float(p.bias[col]) : 0.0f);
      const float up = acc[1][r] * scale + (p.bias != nullptr ? __bfloat162float(p.bias[p.n + col]) : 0.0f);
      *out = __float2bfloat16_rn(gate / (1.0f + __expf(-gate)) * up);
    } else {
#pragma unroll
      for (int j = 0; j < kRows; ++j) {
        if (col + j >= p.n) break;
        float v = acc[j][r] * scale + (p.bias != nullptr ? __bfloat162float(p.bias[col + j]) : 0.0f);
        if constexpr (kEpilogue == SmallMGemvEpilogue::kAddToOut) v += __bfloat162float(out[j]);
        if constexpr (sizeof(Out) == 4) {
          out[j] = v;
        } else {
          out[j] = __float2bfloat16_rn(v);
        }
      }
    }
  }
}

// kLoads 16-byte loads in flight per lane, over kRows rows per warp.
template <int kM, int kLoads, int kRows, bool kNorm, SmallMGemvEpilogue kEpilogue, typename Out>
cudaError_t LaunchInstance(const SmallMGemvParams& p, cudaStream_t stream) {
  const int64_t units = kEpilogue == SmallMGemvEpilogue::kSiluMul ? p.n : (p.n + kRows - 1) / kRows;
  return LaunchKernel(p.programmatic, SmallMGemvKernel<kM, kLoads / kRows, kRows, kNorm, kEpilogue, Out>,
                      dim3(CeilDiv(units, kWarps)), dim3(kWarps * 32), stream, p);
}

template <int kM, int kLoads, int kRows>
cudaError_t LaunchRows(const SmallMGemvParams& p, cudaStream_t stream) {
  const bool norm = p.norm_weight != nullptr;
  switch (p.epilogue) {
    case SmallMGemvEpilogue::kStore:
      if (p.out_is_f32) {
        return norm ? LaunchInstance<kM, kLoads, kRows, true, SmallMGemvEpilogue::kStore, float>(p, stream)
                    : LaunchInstance<kM, kLoads, kRows, false, SmallMGemvEpilogue::kStore, float>(p, stream);
      }
      return norm ? LaunchInstance<kM, kLoads, kRows, true, SmallMGemvEpilogue::kStore, __nv_bfloat16>(p, stream)
                  : LaunchInstance<kM, kLoads, kRows, false, SmallMGemvEpilogue::kStore, __nv_bfloat16>(p, stream);
    case SmallMGemvEpilogue::kAddToOut:
      return LaunchInstance<kM, kLoads, kRows, false, SmallMGemvEpilogue::kAddToOut, __nv_bfloat16>(p, stream);
    case SmallMGemvEpilogue::kSiluMul:
      return LaunchInstance<kM, kLoads, 2, true, SmallMGemvEpilogue::kSiluMul, __nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

template <int kM>
cudaError_t LaunchShape(const SmallMGemvParams& p, cudaStream_t stream) {
  // One row of x: two output columns per warp, so a GEMV holds at most about half of each SM's warp
  // slots and the next (programmatic) kernel's CTAs fit beside it and start their weight loads
  // (-0.07 ms per batch-1 decode step against one per warp in one H100 run). More rows (5
  // CTAs per SM): one per warp while the grid fits one wave, else two. 8 loads in flight per lane
  // per warp (16 measured slower: ~120 registers, half the warps per SM).
  const int64_t sms = p.num_sms > 0 ? p.num_sms : 132;
  const bool pairs = p.columns_per_warp == 2 ||
                     (p.columns_per_warp == 0 && (kM == 1 || p.n > sms * MinBlocksPerSm(kM) * kWarps));
  return pairs ? LaunchRows<kM, 8, 2>(p, stream) : LaunchRows<kM, 8, 1>(p, stream);
}

}  // namespace

bool SmallMGemvSupports(int64_t m, int64_t k, const void* x, const void* weight) {
  return m >= 1 && m <= kSmallMGemvMaxRows && k > 0 && k % 8 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(weight) % 16 == 0;
}

bool SmallMGemvParamsValid(const SmallMGemvParams& p) {
  if (!SmallMGemvSupports(p.m, p.k, p.x, p.weight)) return false;
  if (reinterpret_cast<uintptr_t>(p.norm_weight) % 16 != 0) return false;
  const bool norm = p.norm_weight != nullptr;
  switch (p.epilogue) {
    case SmallMGemvEpilogue::kStore: break;
    case SmallMGemvEpilogue::kAddToOut:
      if (norm || p.out_is_f32) return false;
      break;
    case SmallMGemvEpilogue::kSiluMul:
      if (!norm || p.out_is_f32) return false;
      break;
    default: return false;
  }
  return p.columns_per_warp >= 0 && p.columns_per_warp <= 2 && p.n >= 0;
}

cudaError_t LaunchSmallMGemv(const SmallMGemvParams& p, cudaStream_t stream) {
  if (!SmallMGemvParamsValid(p)) return cudaErrorInvalidValue;
  if (p.n == 0) return cudaSuccess;
  // Streamed: where it takes the shape, and for grids the register kernel does not already stream
  // at the read bandwidth (the LM head's 128k rows, 15 waves: 100% against 93% streamed).
  const int64_t sms = p.num_sms > 0 ? p.num_sms : 132;
  if (p.m <= p.streamed_max_rows && p.n <= kStreamedGemvMaxRowsPerSm * sms && StreamedGemvSupports(p, p.num_sms)) {
    return LaunchStreamedGemv(p, stream);
  }
  switch (p.m) {
    case 1: return LaunchShape<1>(p, stream);
    case 2: return LaunchShape<2>(p, stream);
    case 3: return LaunchShape<3>(p, stream);
    default: return LaunchShape<4>(p, stream);
  }
}

}  // namespace tandem::kernels
