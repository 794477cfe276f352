#include "kernels/small_m_gemv.cuh"

#include "kernels/kernel_utils.cuh"

namespace tandem::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kUnroll = 8;  // 16-byte weight loads in flight per lane

__device__ __forceinline__ float Dot8(const uint4& a, const uint4& b) {
  const __nv_bfloat162* ha = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* hb = reinterpret_cast<const __nv_bfloat162*>(&b);
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 fa = __bfloat1622float2(ha[i]);
    const float2 fb = __bfloat1622float2(hb[i]);
    s = fmaf(fa.x, fb.x, fmaf(fa.y, fb.y, s));
  }
  return s;
}

template <int kM, typename Out>
__global__ void __launch_bounds__(kWarps * 32) SmallMGemvKernel(SmallMGemvParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (col >= p.n) return;  // warp-uniform
  const uint4* w = reinterpret_cast<const uint4*>(p.weight + col * p.k);
  const uint4* x = reinterpret_cast<const uint4*>(p.x);
  const int64_t chunks = p.k / 8;  // 16-byte chunks per row
  float acc[kM];
#pragma unroll
  for (int r = 0; r < kM; ++r) acc[r] = 0.0f;
  for (int64_t c0 = lane; c0 < chunks; c0 += 32 * kUnroll) {
    uint4 wv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + 32 * u;
      wv[u] = c < chunks ? __ldcs(w + c) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + 32 * u;
      if (c < chunks) {
#pragma unroll
        for (int r = 0; r < kM; ++r) acc[r] += Dot8(wv[u], __ldg(x + r * chunks + c));
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kM; ++r) acc[r] = WarpSum(acc[r]);
  if (lane == 0) {
    const float b = p.bias != nullptr ? __bfloat162float(p.bias[col]) : 0.0f;
    Out* out = static_cast<Out*>(p.out);
#pragma unroll
    for (int r = 0; r < kM; ++r) {
      if constexpr (sizeof(Out) == 4) {
        out[r * p.n + col] = acc[r] + b;
      } else {
        out[r * p.n + col] = __float2bfloat16_rn(acc[r] + b);
      }
    }
  }
}

template <int kM>
cudaError_t Launch(const SmallMGemvParams& p, cudaStream_t stream) {
  const unsigned int blocks = CeilDiv(p.n, kWarps);
  if (p.out_is_f32) {
    SmallMGemvKernel<kM, float><<<blocks, kWarps * 32, 0, stream>>>(p);
  } else {
    SmallMGemvKernel<kM, __nv_bfloat16><<<blocks, kWarps * 32, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace

bool SmallMGemvSupports(int64_t m, int64_t k, const void* x, const void* weight) {
  return m >= 1 && m <= kSmallMGemvMaxRows && k > 0 && k % 8 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(weight) % 16 == 0;
}

cudaError_t LaunchSmallMGemv(const SmallMGemvParams& p, cudaStream_t stream) {
  if (!SmallMGemvSupports(p.m, p.k, p.x, p.weight)) return cudaErrorInvalidValue;
  if (p.n == 0) return cudaSuccess;
  switch (p.m) {
    case 1: return Launch<1>(p, stream);
    case 2: return Launch<2>(p, stream);
    case 3: return Launch<3>(p, stream);
    default: return Launch<4>(p, stream);
  }
}

}  // namespace tandem::kernels
