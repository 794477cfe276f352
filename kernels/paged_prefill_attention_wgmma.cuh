// Paged prefill attention on Hopper's warpgroup MMA (wgmma, FlashAttention-3 style): the same
// operation and the same launch description as kernels/paged_prefill_attention.cuh (a flat batch of
// prefill chunks and decode tokens, causal over each sequence's cached prefix, sliding windows, GQA,
// K/V through block tables from the cache [num_blocks, num_kv_heads, block_size, head_dim]), on
// sm_90a only.
//
// One CTA (two warpgroups of 64 rows) takes one work item for one KV head: its 128 rows are
// (token, query head) pairs of that KV head, as in the mma.sync kernel, so the work items are the
// same (PagedPrefillAttentionTileTokens). Q sits in shared memory (128-byte swizzled) for the whole
// item; K/V tiles of 128 keys are gathered from the paged cache with cp.async into swizzled
// three-stage rings (two tiles ahead). S = Q K^T is wgmma m64n128k16 with both operands in shared
// memory; P (bf16, from the S registers) times V is wgmma with P in registers and V read MN-major.
// Each iteration issues the next tile's Q K^T and this tile's P V together and runs the next tile's
// softmax while P V runs.
// Head dims 64 and 128; any block size; group sizes up to 128.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/paged_prefill_attention.cuh"

namespace tandem::kernels {

// Head dim 64 or 128 and 1 <= group <= 128, on a device of compute capability 9.0 (the kernel is
// built for sm_90a only); the caller checks the device.
bool PagedPrefillAttentionWgmmaSupports(int32_t head_dim, int32_t group);

// Work items of at most PagedPrefillAttentionTileTokens(group) tokens of one sequence.
// cudaErrorInvalidValue when !PagedPrefillAttentionWgmmaSupports or num_heads % num_kv_heads != 0.
cudaError_t LaunchPagedPrefillAttentionWgmma(const PagedPrefillAttentionParams& params, cudaStream_t stream);

}  // namespace tandem::kernels
