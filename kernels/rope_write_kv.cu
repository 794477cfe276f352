#include "kernels/rope_write_kv.cuh"

#include "kernels/kernel_utils.cuh"

namespace tandem::kernels {
namespace {

// One block per token. Each thread rotates (head, i) pairs of q and k; k's rotated pair goes to both
// the activation (attention reads q and the cache, the model may read k) and the cache. Dims past
// rotary_dim, and v, are copied as they are.
__global__ void RopeWriteKvKernel(RopeWriteKvParams p) {
  const int64_t t = blockIdx.x;
  const int32_t hd = p.head_dim;
  const int32_t half = p.rotary_dim / 2;
  const int64_t pos = p.positions[t];
  const float* cos = p.cos + pos * half;
  const float* sin = p.sin + pos * half;
  const int64_t slot = p.slot_mapping[t];
  const bool write = slot >= 0;
  const int64_t block = write ? slot / p.block_size : 0;
  const int64_t offset = write ? slot % p.block_size : 0;
  auto cache_index = [&](int32_t h, int32_t d) {
    return ((block * p.num_kv_heads + h) * p.block_size + offset) * hd + d;
  };

  // q rotation.
  __nv_bfloat16* q = p.q + t * p.num_heads * hd;
  for (int32_t i = threadIdx.x; i < p.num_heads * half; i += blockDim.x) {
    const int32_t h = i / half;
    const int32_t j = i % half;
    __nv_bfloat16* x = q + h * hd;
    const float x1 = __bfloat162float(x[j]);
    const float x2 = __bfloat162float(x[j + half]);
    x[j] = __float2bfloat16_rn(x1 * cos[j] - x2 * sin[j]);
    x[j + half] = __float2bfloat16_rn(x2 * cos[j] + x1 * sin[j]);
  }
  // k rotation + cache write of the rotated dims.
  __nv_bfloat16* k = p.k + t * p.num_kv_heads * hd;
  for (int32_t i = threadIdx.x; i < p.num_kv_heads * half; i += blockDim.x) {
    const int32_t h = i / half;
    const int32_t j = i % half;
    __nv_bfloat16* x = k + h * hd;
    const float x1 = __bfloat162float(x[j]);
    const float x2 = __bfloat162float(x[j + half]);
    const __nv_bfloat16 y1 = __float2bfloat16_rn(x1 * cos[j] - x2 * sin[j]);
    const __nv_bfloat16 y2 = __float2bfloat16_rn(x2 * cos[j] + x1 * sin[j]);
    x[j] = y1;
    x[j + half] = y2;
    if (write) {
      p.k_cache[cache_index(h, j)] = y1;
      p.k_cache[cache_index(h, j + half)] = y2;
    }
  }
  if (!write) return;
  // Unrotated tail of k (partial rotary), and all of v.
  const int32_t tail = hd - p.rotary_dim;
  for (int32_t i = threadIdx.x; i < p.num_kv_heads * tail; i += blockDim.x) {
    const int32_t h = i / tail;
    const int32_t d = p.rotary_dim + i % tail;
    p.k_cache[cache_index(h, d)] = k[h * hd + d];
  }
  const __nv_bfloat16* v = p.v + t * p.num_kv_heads * hd;
  for (int32_t i = threadIdx.x; i < p.num_kv_heads * hd; i += blockDim.x) {
    const int32_t h = i / hd;
    const int32_t d = i % hd;
    p.v_cache[cache_index(h, d)] = v[i];
  }
}

}  // namespace

cudaError_t LaunchRopeWriteKv(const RopeWriteKvParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0) return cudaSuccess;
  RopeWriteKvKernel<<<p.num_tokens, 128, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace tandem::kernels
