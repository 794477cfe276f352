#include "kernels/small_m_gemv.cuh"

#include "kernels/kernel_utils.cuh"

namespace tandem::kernels {
namespace {

constexpr int kWarps = 4;

__device__ __forceinline__ void Unpack8(const uint4& v, float (&f)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

// One warp per output column: weight row `col` (and, for kSiluMul, up row n + col) streamed once
// with kUnroll 16-byte loads in flight per lane and row. kRows weight rows per warp.
template <int kM, int kUnroll, bool kNorm, SmallMGemvEpilogue kEpilogue, typename Out>
__global__ void __launch_bounds__(kWarps * 32) SmallMGemvKernel(const SmallMGemvParams p) {
  constexpr int kRows = kEpilogue == SmallMGemvEpilogue::kSiluMul ? 2 : 1;
  AllowDependentLaunch();
  const int lane = threadIdx.x & 31;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const bool active = col < p.n;  // warp-uniform
  const int64_t chunks = p.k / 8;  // 16-byte chunks per row
  const uint4* w[kRows];
#pragma unroll
  for (int j = 0; j < kRows; ++j) {
    w[j] = reinterpret_cast<const uint4*>(p.weight + (col + j * p.n) * p.k);
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
        for (int j = 0; j < kRows; ++j) Unpack8(wv[u][j], wf[j]);
        if constexpr (kNorm) {
          // (x * inv_rms * g) . w == inv_rms * (x . (w * g)): scale the weights here, inv_rms at the end.
          float gf[8];
          Unpack8(__ldg(g + c), gf);
#pragma unroll
          for (int j = 0; j < kRows; ++j) {
#pragma unroll
            for (int i = 0; i < 8; ++i) wf[j][i] *= gf[i];
          }
        }
#pragma unroll
        for (int r = 0; r < kM; ++r) {
          float xf[8];
          Unpack8(__ldg(x + r * chunks + c), xf);
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
    float v = acc[0][r] * scale + (p.bias != nullptr ? __bfloat162float(p.bias[col]) : 0.0f);
    Out* out = static_cast<Out*>(p.out) + r * p.n + col;
    if constexpr (kEpilogue == SmallMGemvEpilogue::kSiluMul) {
      const float up = acc[kRows - 1][r] * scale + (p.bias != nullptr ? __bfloat162float(p.bias[p.n + col]) : 0.0f);
      v = v / (1.0f + __expf(-v)) * up;
    } else if constexpr (kEpilogue == SmallMGemvEpilogue::kAddToOut) {
      v += __bfloat162float(*out);
    }
    if constexpr (sizeof(Out) == 4) {
      *out = v;
    } else {
      *out = __float2bfloat16_rn(v);
    }
  }
}

template <int kM, int kUnroll, bool kNorm, SmallMGemvEpilogue kEpilogue, typename Out>
cudaError_t LaunchInstance(const SmallMGemvParams& p, cudaStream_t stream) {
  return LaunchKernel(p.programmatic, SmallMGemvKernel<kM, kUnroll, kNorm, kEpilogue, Out>, dim3(CeilDiv(p.n, kWarps)),
                      dim3(kWarps * 32), stream, p);
}

template <int kM, int kUnroll>
cudaError_t LaunchRows(const SmallMGemvParams& p, cudaStream_t stream) {
  const bool norm = p.norm_weight != nullptr;
  switch (p.epilogue) {
    case SmallMGemvEpilogue::kStore:
      if (p.out_is_f32) {
        return norm ? LaunchInstance<kM, kUnroll, true, SmallMGemvEpilogue::kStore, float>(p, stream)
                    : LaunchInstance<kM, kUnroll, false, SmallMGemvEpilogue::kStore, float>(p, stream);
      }
      return norm ? LaunchInstance<kM, kUnroll, true, SmallMGemvEpilogue::kStore, __nv_bfloat16>(p, stream)
                  : LaunchInstance<kM, kUnroll, false, SmallMGemvEpilogue::kStore, __nv_bfloat16>(p, stream);
    case SmallMGemvEpilogue::kAddToOut:
      return LaunchInstance<kM, kUnroll, false, SmallMGemvEpilogue::kAddToOut, __nv_bfloat16>(p, stream);
    case SmallMGemvEpilogue::kSiluMul:
      // Two weight rows per warp: half the unroll keeps the loads in flight per lane.
      return LaunchInstance<kM, kUnroll / 2, true, SmallMGemvEpilogue::kSiluMul, __nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

template <int kM>
cudaError_t LaunchUnroll(const SmallMGemvParams& p, cudaStream_t stream) {
  // 16 loads per lane hold a whole 4096-wide row in flight; longer rows stream at 8.
  const int unroll = p.unroll != 0 ? p.unroll : 16;
  return unroll == 16 ? LaunchRows<kM, 16>(p, stream) : LaunchRows<kM, 8>(p, stream);
}

}  // namespace

bool SmallMGemvSupports(int64_t m, int64_t k, const void* x, const void* weight) {
  return m >= 1 && m <= kSmallMGemvMaxRows && k > 0 && k % 8 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(weight) % 16 == 0;
}

cudaError_t LaunchSmallMGemv(const SmallMGemvParams& p, cudaStream_t stream) {
  if (!SmallMGemvSupports(p.m, p.k, p.x, p.weight)) return cudaErrorInvalidValue;
  if (reinterpret_cast<uintptr_t>(p.norm_weight) % 16 != 0) return cudaErrorInvalidValue;
  const bool norm = p.norm_weight != nullptr;
  switch (p.epilogue) {
    case SmallMGemvEpilogue::kStore: break;
    case SmallMGemvEpilogue::kAddToOut:
      if (norm || p.out_is_f32) return cudaErrorInvalidValue;
      break;
    case SmallMGemvEpilogue::kSiluMul:
      if (!norm || p.out_is_f32) return cudaErrorInvalidValue;
      break;
    default: return cudaErrorInvalidValue;
  }
  if (p.unroll != 0 && p.unroll != 8 && p.unroll != 16) return cudaErrorInvalidValue;
  if (p.n == 0) return cudaSuccess;
  switch (p.m) {
    case 1: return LaunchUnroll<1>(p, stream);
    case 2: return LaunchUnroll<2>(p, stream);
    case 3: return LaunchUnroll<3>(p, stream);
    default: return LaunchUnroll<4>(p, stream);
  }
}

}  // namespace tandem::kernels
