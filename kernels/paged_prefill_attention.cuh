// Paged prefill attention on the tensor cores (FlashAttention-2 style): for a flat batch of prefill
// chunks (decode tokens mixed in are fine), causal over each sequence's cached prefix (a query at
// position p sees keys (p - window, p] of its own sequence, all of [0, p] without a window), GQA,
// K/V read through block tables from the cache [num_blocks, num_kv_heads, block_size, head_dim].
//
// One CTA (4 warps of 32 rows) takes one work item (a run of at most TileTokens(group) consecutive
// tokens of one sequence) for one KV head: the tile's 128 rows are (token, query head) pairs of that
// KV head, so each K/V tile is loaded once for the whole group. Q K^T and P V are bf16 mma.sync
// m16n8k16 with fp32 accumulators; K/V tiles of 64 keys are double-buffered in shared memory through
// cp.async; the softmax is online, in fp32, in log2 units (ex2 with the scale folded in).
// Head dims 64 and 128; any block size; group sizes up to 128.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/paged_attention.cuh"

namespace tandem::kernels {

// (token, query head) rows one CTA computes.
inline constexpr int32_t kPagedPrefillAttentionRows = 128;

// Tokens per work item: all query heads of a KV head for each token share one CTA.
inline int32_t PagedPrefillAttentionTileTokens(int32_t group) { return kPagedPrefillAttentionRows / group; }

// Head dim 64 or 128 and 1 <= group <= 128.
bool PagedPrefillAttentionSupports(int32_t head_dim, int32_t group);

// The same launch description as the CUDA-core kernel's (work items of at most TileTokens(group)
// tokens of one sequence, the tokens of each sequence in order).
using PagedPrefillAttentionParams = PagedAttentionParams;

// Whether a launch of either prefill kernel takes these params: heads divide into KV heads, the
// head dim and group PagedPrefillAttentionSupports, a positive block size.
bool PagedPrefillAttentionParamsValid(const PagedPrefillAttentionParams& params);

// cudaErrorInvalidValue when !PagedPrefillAttentionParamsValid.
cudaError_t LaunchPagedPrefillAttention(const PagedPrefillAttentionParams& params, cudaStream_t stream);

}  // namespace tandem::kernels
