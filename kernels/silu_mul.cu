#include "kernels/silu_mul.cuh"

#include <algorithm>

#include "kernels/kernel_utils.cuh"

namespace tandem::kernels {
namespace {

__device__ __forceinline__ float SiluTimes(float g, float u) { return g / (1.0f + __expf(-g)) * u; }

// Grid-stride over pairs of elements (n even) or single elements.
template <bool kPairs>
__global__ void SiluMulKernel(SiluMulParams p) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  if constexpr (kPairs) {
    const int64_t pairs = p.n / 2;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < pairs; i += stride) {
      const float2 g = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(p.gate)[i]);
      const float2 u = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(p.up)[i]);
      reinterpret_cast<__nv_bfloat162*>(p.out)[i] = __floats2bfloat162_rn(SiluTimes(g.x, u.x), SiluTimes(g.y, u.y));
    }
  } else {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.n; i += stride) {
      p.out[i] = __float2bfloat16_rn(SiluTimes(__bfloat162float(p.gate[i]), __bfloat162float(p.up[i])));
    }
  }
}

}  // namespace

cudaError_t LaunchSiluMul(const SiluMulParams& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  const bool pairs = p.n % 2 == 0;
  const int64_t work = pairs ? p.n / 2 : p.n;
  const unsigned int blocks = std::min<unsigned int>(CeilDiv(work, 256), 65535u);
  if (pairs) {
    SiluMulKernel<true><<<blocks, 256, 0, stream>>>(p);
  } else {
    SiluMulKernel<false><<<blocks, 256, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace tandem::kernels
