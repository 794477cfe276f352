// Paged attention for a flat batch that mixes prefill chunks and decode tokens: causal (a query at
// position p sees keys (p - window, p] of its own sequence, all of [0, p] without a window), GQA,
// K/V read through block tables from the cache [num_blocks, num_kv_heads, block_size, head_dim],
// online softmax in fp32.
//
// Work split, planned on the host once per batch (PlanPagedAttention's numbers): each CTA takes one
// work item (a run of at most TileTokens(group) consecutive tokens of one sequence) for one KV head
// and up to 32 of that KV head's query heads: 32 (token, head) rows share every K/V tile it loads.
// Head dims 32, 64, 80, 96, 128, 256 are compiled in; others are refused (SupportsHeadDim).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

namespace tandem::kernels {

// (token, query head) rows one CTA computes.
inline constexpr int32_t kPagedAttentionRowsPerCta = 32;

// Query heads of one KV head that one CTA takes, and the tokens per work item.
inline int32_t PagedAttentionHeadsPerCta(int32_t group) { return std::min(group, kPagedAttentionRowsPerCta); }
inline int32_t PagedAttentionTileTokens(int32_t group) {
  return std::max<int32_t>(1, kPagedAttentionRowsPerCta / PagedAttentionHeadsPerCta(group));
}

bool PagedAttentionSupportsHeadDim(int32_t head_dim);

struct PagedAttentionParams {
  const __nv_bfloat16* q = nullptr;        // [num_tokens, num_heads * head_dim]
  const __nv_bfloat16* k_cache = nullptr;  // [num_blocks, num_kv_heads, block_size, head_dim]
  const __nv_bfloat16* v_cache = nullptr;
  __nv_bfloat16* out = nullptr;            // [num_tokens, num_heads * head_dim]
  const int32_t* block_tables = nullptr;   // device [num_seqs, max_blocks_per_seq]
  const int32_t* positions = nullptr;      // device [num_tokens]
  // device [num_work_items, 3]: (sequence, first token, token count <= TileTokens(group)).
  const int32_t* work_items = nullptr;
  int32_t num_work_items = 0;
  int32_t max_blocks_per_seq = 0;
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t block_size = 0;
  int32_t sliding_window = 0;  // 0: none
  float scale = 1.0f;
};

// cudaErrorInvalidValue for an unsupported head dim or num_heads not a multiple of num_kv_heads.
cudaError_t LaunchPagedAttention(const PagedAttentionParams& params, cudaStream_t stream);

}  // namespace tandem::kernels
