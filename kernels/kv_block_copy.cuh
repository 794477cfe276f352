// KV block gather/scatter between the paged cache and a contiguous buffer, for KV transfers and
// swap: one layer's K and V cache [num_blocks, num_kv_heads, block_size, head_dim] hold one block
// of one layer contiguously (block_bytes bytes); the buffer holds [K|V][num_ids][block_bytes], i.e.
// the K of every listed block, in list order, then their V (the layout of Backend::GatherKvBlocks
// for one layer).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace tandem::kernels {

struct KvBlockCopyParams {
  void* k_cache = nullptr;            // one layer's K cache
  void* v_cache = nullptr;            // one layer's V cache
  void* buffer = nullptr;             // [2][num_ids][block_bytes]
  const int32_t* block_ids = nullptr; // device [num_ids], each < num_blocks
  int32_t num_ids = 0;
  int64_t block_bytes = 0;            // a multiple of 16
};

// buffer <- cache (gather) or cache <- buffer (scatter). cudaErrorInvalidValue when block_bytes or
// a pointer is not 16-byte aligned.
cudaError_t LaunchGatherKvBlocks(const KvBlockCopyParams& params, cudaStream_t stream);
cudaError_t LaunchScatterKvBlocks(const KvBlockCopyParams& params, cudaStream_t stream);

}  // namespace tandem::kernels
