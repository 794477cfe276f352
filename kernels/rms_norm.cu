#include "kernels/rms_norm.cuh"

#include "kernels/kernel_utils.cuh"

namespace tandem::kernels {
namespace {

// One block per row. Pass 1 adds the residual (rounded to bf16, as the model's residual stream is
// bf16) and sums squares in fp32; pass 2 re-reads the row (L1/L2-resident) and scales it. Each
// thread touches the same elements in both passes, so it reads back what it wrote itself.
__global__ void RmsNormKernel(RmsNormParams p) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const __nv_bfloat16* x = p.x + r * p.hidden;
  __nv_bfloat16* res = p.residual != nullptr ? p.residual + r * p.hidden : nullptr;
  const __nv_bfloat16* src = res != nullptr ? res : x;
  float sum_sq = 0.0f;
  const int64_t pairs = p.hidden / 2;
  const bool vec2 = p.hidden % 2 == 0;
  if (vec2) {
    for (int64_t i = threadIdx.x; i < pairs; i += blockDim.x) {
      float2 v = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(x)[i]);
      if (res != nullptr) {
        const float2 rv = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(res)[i]);
        const __nv_bfloat162 sum = __floats2bfloat162_rn(v.x + rv.x, v.y + rv.y);
        reinterpret_cast<__nv_bfloat162*>(res)[i] = sum;
        v = __bfloat1622float2(sum);
      }
      sum_sq += v.x * v.x + v.y * v.y;
    }
  } else {
    for (int64_t i = threadIdx.x; i < p.hidden; i += blockDim.x) {
      float v = __bfloat162float(x[i]);
      if (res != nullptr) {
        const __nv_bfloat16 sum = __float2bfloat16_rn(v + __bfloat162float(res[i]));
        res[i] = sum;
        v = __bfloat162float(sum);
      }
      sum_sq += v * v;
    }
  }
  const float total = BlockSum(sum_sq, scratch);
  const float inv = rsqrtf(total / static_cast<float>(p.hidden) + p.eps);
  __nv_bfloat16* out = p.out + r * p.hidden;
  if (vec2) {
    for (int64_t i = threadIdx.x; i < pairs; i += blockDim.x) {
      const float2 v = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(src)[i]);
      const float2 w = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(p.weight)[i]);
      reinterpret_cast<__nv_bfloat162*>(out)[i] = __floats2bfloat162_rn(w.x * (v.x * inv), w.y * (v.y * inv));
    }
  } else {
    for (int64_t i = threadIdx.x; i < p.hidden; i += blockDim.x) {
      out[i] = __float2bfloat16_rn(__bfloat162float(p.weight[i]) * (__bfloat162float(src[i]) * inv));
    }
  }
}

}  // namespace

cudaError_t LaunchRmsNorm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  const int threads = p.hidden >= 4096 ? 1024 : p.hidden >= 1024 ? 512 : p.hidden >= 256 ? 128 : 32;
  RmsNormKernel<<<static_cast<unsigned int>(p.rows), threads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace tandem::kernels
