// The launch parameters every paged attention kernel shares (kernels::PagedAttentionParams,
// kernels::PagedDecodeAttentionParams): the step's tensors, its block tables and positions on the
// device, and the attention shape. One place fills them, for eager steps and decode graphs alike.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "backend/backend.h"

namespace tandem {

template <typename Params>
Params PagedAttentionLaunchParams(const Tensor& q, const KvLayerView& cache, const Tensor& out,
                                  const int32_t* block_tables, const int32_t* positions,
                                  int32_t max_blocks_per_seq, int32_t block_size, const AttentionParams& params) {
  Params p;
  p.q = static_cast<const __nv_bfloat16*>(q.data);
  p.k_cache = static_cast<const __nv_bfloat16*>(cache.k.data);
  p.v_cache = static_cast<const __nv_bfloat16*>(cache.v.data);
  p.out = static_cast<__nv_bfloat16*>(out.data);
  p.block_tables = block_tables;
  p.positions = positions;
  p.max_blocks_per_seq = max_blocks_per_seq;
  p.block_size = block_size;
  p.num_heads = params.num_heads;
  p.num_kv_heads = params.num_kv_heads;
  p.head_dim = params.head_dim;
  p.sliding_window = params.sliding_window;
  p.scale = params.scale;
  return p;
}

}  // namespace tandem
