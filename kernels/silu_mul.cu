#include "kernels/silu_mul.cuh"

#include <algorithm>

#include "kernels/kernel_utils.cuh"

namespace tandem::kernels {
namespace {

__device__ __forceinline__ float SiluTimes(float g, float u) { return g / (1.0f + __expf(-g)) * u; }

// Grid-stride over pairs of output elements (inter even) or single elements.
template <bool kPairs>
__global__ void SiluMulKernel(SiluMulParams p) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  if constexpr (kPairs) {
    const int64_t half_inter = p.inter / 2;
    const int64_t pairs = p.rows * half_inter;
    const auto* gu = reinterpret_cast<const __nv_bfloat162*>(p.gate_up);
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < pairs; i += stride) {
      const int64_t r = i / half_inter, c = i % half_inter;
      const float2 g = __bfloat1622float2(gu[r * p.inter + c]);
      const float2 u = __bfloat1622float2(gu[r * p.inter + half_inter + c]);
      reinterpret_cast<__nv_bfloat162*>(p.out)[i] = __floats2bfloat162_rn(SiluTimes(g.x, u.x), SiluTimes(g.y, u.y));
    }
  } else {
    const int64_t n = p.rows * p.inter;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
      const int64_t r = i / p.inter, c = i % p.inter;
      const __nv_bfloat16* row = p.gate_up + r * 2 * p.inter;
      p.out[i] = __float2bfloat16_rn(SiluTimes(__bfloat162float(row[c]), __bfloat162float(row[p.inter + c])));
    }
  }
}

}  // namespace

cudaError_t LaunchSiluMul(const SiluMulParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.inter == 0) return cudaSuccess;
  const bool pairs = p.inter % 2 == 0;
  const int64_t work = pairs ? p.rows * p.inter / 2 : p.rows * p.inter;
  const unsigned int blocks = std::min<unsigned int>(CeilDiv(work, 256), 65535u);
  if (pairs) {
    SiluMulKernel<true><<<blocks, 256, 0, stream>>>(p);
  } else {
    SiluMulKernel<false><<<blocks, 256, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace tandem::kernels
