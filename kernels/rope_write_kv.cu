#include "kernels/rope_write_kv.cuh"

#include "kernels/kernel_utils.cuh"

namespace tandem::kernels {
namespace {

// One block per token. Each thread rotates (head, i) pairs of q (into q_out) and of k (into the
// cache). Dims past rotary_dim, and v, are copied as they are.
__global__ void RopeWriteKvKernel(const RopeWriteKvParams p) {
  AllowDependentLaunch();
  WaitForPrerequisiteGrids();  // qkv comes from the kernel before
  const int64_t t = blockIdx.x;
  const int32_t hd = p.head_dim;
  const int32_t half = p.rotary_dim / 2;
  const int64_t pos = p.positions[t];
  const float* cos = p.cos + pos * half;
  const float* sin = p.sin + pos * half;
  const __nv_bfloat16* src = p.qkv + t * (p.num_heads + 2 * p.num_kv_heads) * hd;

  // q rotation; dims past rotary_dim copied.
  __nv_bfloat16* q = p.q_out + t * p.num_heads * hd;
  for (int32_t i = threadIdx.x; i < p.num_heads * half; i += blockDim.x) {
    const int32_t h = i / half;
    const int32_t j = i % half;
    const __nv_bfloat16* x = src + h * hd;
    const float x1 = __bfloat162float(x[j]);
    const float x2 = __bfloat162float(x[j + half]);
    q[h * hd + j] = __float2bfloat16_rn(x1 * cos[j] - x2 * sin[j]);
    q[h * hd + j + half] = __float2bfloat16_rn(x2 * cos[j] + x1 * sin[j]);
  }
  const int32_t tail = hd - p.rotary_dim;
  for (int32_t i = threadIdx.x; i < p.num_heads * tail; i += blockDim.x) {
    const int32_t h = i / tail;
    const int32_t d = p.rotary_dim + i % tail;
    q[h * hd + d] = src[h * hd + d];
  }

  const int64_t slot = p.slot_mapping[t];
  if (slot < 0) return;  // a padded row
  const int64_t block = slot / p.block_size;
  const int64_t offset = slot % p.block_size;
  auto cache_index = [&](int32_t h, int32_t d) {
    return ((block * p.num_kv_heads + h) * p.block_size + offset) * hd + d;
  };
  // k rotation straight into the cache; its unrotated tail (partial rotary); all of v.
  const __nv_bfloat16* k = src + p.num_heads * hd;
  for (int32_t i = threadIdx.x; i < p.num_kv_heads * half; i += blockDim.x) {
    const int32_t h = i / half;
    const int32_t j = i % half;
    const __nv_bfloat16* x = k + h * hd;
    const float x1 = __bfloat162float(x[j]);
    const float x2 = __bfloat162float(x[j + half]);
    p.k_cache[cache_index(h, j)] = __float2bfloat16_rn(x1 * cos[j] - x2 * sin[j]);
    p.k_cache[cache_index(h, j + half)] = __float2bfloat16_rn(x2 * cos[j] + x1 * sin[j]);
  }
  for (int32_t i = threadIdx.x; i < p.num_kv_heads * tail; i += blockDim.x) {
    const int32_t h = i / tail;
    const int32_t d = p.rotary_dim + i % tail;
    p.k_cache[cache_index(h, d)] = k[h * hd + d];
  }
  const __nv_bfloat16* v = k + p.num_kv_heads * hd;
  for (int32_t i = threadIdx.x; i < p.num_kv_heads * hd; i += blockDim.x) {
    const int32_t h = i / hd;
    const int32_t d = i % hd;
    p.v_cache[cache_index(h, d)] = v[i];
  }
}

}  // namespace

cudaError_t LaunchRopeWriteKv(const RopeWriteKvParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0) return cudaSuccess;
  return LaunchKernel(p.programmatic, RopeWriteKvKernel, dim3(p.num_tokens), dim3(128), stream, p);
}

}  // namespace tandem::kernels
