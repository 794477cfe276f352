// CPU paged attention and rotary embedding for the reference backend. K/V live in the paged cache
// ([num_blocks, num_kv_heads, block_size, head_dim], float32) and are found through block tables,
// exactly the layout the CUDA kernels use.
#pragma once

#include "backend/backend.h"
#include "common/thread_pool.h"

namespace tandem::cpu {

void RopeAndWriteKv(Tensor q, Tensor k, const Tensor& v, const RopeTables& rope,
                    const AttentionParams& params, const AttentionMetadata& meta,
                    KvLayerView cache, ThreadPool& pool);

void PagedAttention(const Tensor& q, KvLayerView cache, const AttentionParams& params,
                    const AttentionMetadata& meta, Tensor out, ThreadPool& pool);

}  // namespace tandem::cpu
