// CPU paged attention and rotary embedding for the reference backend. K/V live in the paged cache
// ([num_blocks, num_kv_heads, block_size, head_dim], float32) and are found through block tables,
// exactly the layout the CUDA kernels use.
#pragma once

#include "backend/backend.h"
#include "common/thread_pool.h"

namespace tandem::cpu {

// Backend::RopeAndWriteKv: qkv [T, (nh + 2 nkv) hd] fused, rotated q into q_out, k and v into the
// cache (negative slots skipped).
void RopeAndWriteKv(const Tensor& qkv, Tensor q_out, const RopeTables& rope,
                    const AttentionParams& params, const AttentionMetadata& meta,
                    KvLayerView cache, ThreadPool& pool);

void PagedAttention(const Tensor& q, KvLayerView cache, const AttentionParams& params,
                    const AttentionMetadata& meta, Tensor out, ThreadPool& pool);

}  // namespace tandem::cpu
