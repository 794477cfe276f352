#include "kernels/kv_block_copy.cuh"

namespace tandem::kernels {
namespace {

constexpr int kThreads = 256;

// One CTA per (listed block, K or V): 16-byte words, every thread a strided share.
template <bool kGather>
__global__ void KvBlockCopyKernel(KvBlockCopyParams p) {
  const int32_t i = blockIdx.x;
  const int32_t which = blockIdx.y;  // 0: K, 1: V
  const int64_t words = p.block_bytes / 16;
  char* cache = static_cast<char*>(which == 0 ? p.k_cache : p.v_cache);
  uint4* block = reinterpret_cast<uint4*>(cache + static_cast<int64_t>(p.block_ids[i]) * p.block_bytes);
  uint4* slot = reinterpret_cast<uint4*>(static_cast<char*>(p.buffer) +
                                         (static_cast<int64_t>(which) * p.num_ids + i) * p.block_bytes);
  for (int64_t w = threadIdx.x; w < words; w += kThreads) {
    if constexpr (kGather) {
      slot[w] = block[w];
    } else {
      block[w] = slot[w];
    }
  }
}

bool Valid(const KvBlockCopyParams& p) {
  const uintptr_t bits = reinterpret_cast<uintptr_t>(p.k_cache) | reinterpret_cast<uintptr_t>(p.v_cache) |
                         reinterpret_cast<uintptr_t>(p.buffer) | static_cast<uintptr_t>(p.block_bytes);
  return p.num_ids >= 0 && p.block_bytes > 0 && bits % 16 == 0 && (p.num_ids == 0 || p.block_ids != nullptr);
}

template <bool kGather>
cudaError_t Launch(const KvBlockCopyParams& p, cudaStream_t stream) {
  if (!Valid(p)) return cudaErrorInvalidValue;
  if (p.num_ids == 0) return cudaSuccess;
  KvBlockCopyKernel<kGather><<<dim3(static_cast<unsigned>(p.num_ids), 2), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchGatherKvBlocks(const KvBlockCopyParams& p, cudaStream_t stream) { return Launch<true>(p, stream); }
cudaError_t LaunchScatterKvBlocks(const KvBlockCopyParams& p, cudaStream_t stream) { return Launch<false>(p, stream); }

}  // namespace tandem::kernels
