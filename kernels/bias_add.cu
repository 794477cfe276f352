#include "kernels/bias_add.cuh"

#include <algorithm>

#include "kernels/kernel_utils.cuh"

namespace tandem::kernels {
namespace {

template <typename T>
__global__ void BiasAddKernel(BiasAddParams p) {
  T* out = static_cast<T*>(p.out);
  const int64_t n = p.rows * p.cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const float b = __bfloat162float(p.bias[i % p.cols]);
    if constexpr (sizeof(T) == 4) {
      out[i] += b;
    } else {
      out[i] = __float2bfloat16_rn(__bfloat162float(out[i]) + b);
    }
  }
}

}  // namespace

cudaError_t LaunchBiasAdd(const BiasAddParams& p, cudaStream_t stream) {
  const int64_t n = p.rows * p.cols;
  if (n == 0) return cudaSuccess;
  const unsigned int blocks = std::min<unsigned int>(CeilDiv(n, 256), 65535u);
  if (p.out_is_f32) {
    BiasAddKernel<float><<<blocks, 256, 0, stream>>>(p);
  } else {
    BiasAddKernel<__nv_bfloat16><<<blocks, 256, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace tandem::kernels
