#include "kernels/embedding.cuh"

#include "kernels/kernel_utils.cuh"

namespace tandem::kernels {
namespace {

// One block per token; 16-byte copies when the row is a multiple of 8 elements.
template <bool kVec>
__global__ void EmbeddingKernel(EmbeddingParams p) {
  const int64_t t = blockIdx.x;
  const int64_t row = p.ids[t];
  const __nv_bfloat16* src = p.table + row * p.hidden;
  __nv_bfloat16* dst = p.out + t * p.hidden;
  if constexpr (kVec) {
    const int64_t n = p.hidden / 8;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
    }
  } else {
    for (int64_t i = threadIdx.x; i < p.hidden; i += blockDim.x) dst[i] = src[i];
  }
}

}  // namespace

cudaError_t LaunchEmbedding(const EmbeddingParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0) return cudaSuccess;
  const bool vec = p.hidden % 8 == 0 && reinterpret_cast<uintptr_t>(p.table) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(p.out) % 16 == 0;
  const dim3 grid(p.num_tokens);
  const dim3 block(128);
  if (vec) {
    EmbeddingKernel<true><<<grid, block, 0, stream>>>(p);
  } else {
    EmbeddingKernel<false><<<grid, block, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace tandem::kernels
