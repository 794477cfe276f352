// Split-KV ("flash-decoding") paged attention for decode-only batches: every sequence has exactly
// one query token (token i belongs to sequence i). Same semantics as paged_attention.cuh (causal,
// optional sliding window, GQA, K/V through block tables, fp32 online softmax).
//
// Work split: one CTA per (key split, KV head, sequence) reads each K/V row of its range once for
// all query heads of that KV head (up to 8). Head dims 64 and 128 take the tensor-core kernel: each
// of the CTA's 4 warps streams its own tiles of 16 keys (every 4th tile of the range) through a
// ring of shared-memory stages with cp.async (several tiles in flight per warp, one block-table
// lookup per tile when block_size is a multiple of 16), and computes scores and P.V with bf16
// mma.sync (the group's query heads are the rows of the m16 tile). Head dim 256 takes the CUDA-core
// kernel: a warp reads one key row with 16-byte loads into registers. When a sequence's keys are split
// over several CTAs (few sequences, long contexts), each writes an unnormalized partial result to
// `partial` and a second kernel combines them — or, with `split_counters`, the split CTA of a
// (sequence, KV head) that finishes last combines them itself (no second kernel); splits beyond a
// sequence's keys are empty and exit at once. The grid depends only on (num_splits, num_kv_heads,
// num_seqs), never on lengths.
//
// Programmatic launch (`programmatic`, Hopper): the attention kernel and the combine kernel launch
// as programmatic dependents (kernels/kernel_utils.cuh). Before griddepcontrol.wait the attention
// kernel reads only the positions and block tables (uploaded by a copy before the step's kernels,
// never written by a kernel of the step) and, at head dims 64/128, issues the cp.async loads of its
// first tiles whose keys all lie before the query's position: the kernel before it (RoPE) writes
// only the query's own key (position `positions[seq]`) and q. A tile holding that key, q, the
// outputs, the workspace and the counters are read or written only after the wait. This relies on
// the caller's order: every other write of this K/V (earlier steps, block copies, KV transfer) is
// ordered before a plainly launched kernel of the step (the embedding), so it completed before any
// programmatic kernel after it started; and no other sequence of the batch writes into a block
// this sequence reads (a decode token goes into a block its sequence alone holds).
//
// Fused RoPE (`qkv` set; tensor-core kernel, rotary_dim == head_dim, PagedDecodeAttentionFusesRope):
// the step's RoPE kernel is not needed. q is read from the fused projection qkv and rotated in
// registers (HF rotate_half with rope_cos / rope_sin at positions[seq], rounded to bf16 as
// kernels/rope_write_kv.cuh does); the one CTA per (sequence, KV head) whose split holds the
// query's position rotates the new key, writes it and the new value into the cache at
// slot_mapping[seq] (not when negative: a padded row) and attends to them from shared memory, so
// its tile loads (and every other CTA's) read only keys before the position. Programmatic: the
// kernel before is the projection; before the wait the kernel reads positions, tables, slots, the
// rope tables and the K/V of keys before the position (every tile), after it qkv and the writes.
// Head dims 64, 128, 256 and groups of up to 8 query heads per KV head (others: paged_attention).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace tandem::kernels {

bool PagedDecodeAttentionSupports(int32_t head_dim, int32_t group);
// The fewest keys a split takes by default (PagedDecodeAttentionParams::min_split_keys).
inline constexpr int32_t kPagedDecodeMinSplitKeys = 64;
// Whether kAuto takes the tensor-core kernel for `head_dim` (64, 128); else the CUDA-core one.
bool PagedDecodeAttentionTensorCores(int32_t head_dim);
// Whether a launch may fuse RoPE and the KV write (PagedDecodeAttentionParams::qkv): the
// tensor-core kernel's head dims, the whole head rotated.
bool PagedDecodeAttentionFusesRope(int32_t head_dim, int32_t rotary_dim);

// Which kernel a launch takes. kAuto: tensor cores for head dims 64 and 128, CUDA cores for 256
// (the engine names the one it takes, see PagedDecodeAttentionTensorCores). The others name one
// kernel, for the engine, benchmarks and tests.
enum class PagedDecodeKernel : int32_t { kAuto, kCudaCore, kTensorCore };

// Key splits per sequence for a batch, at least `min_split_keys` keys each (the launch's
// PagedDecodeAttentionParams::min_split_keys) for a context of `max_context`, for the kernel the
// launch takes (kAuto stands for the tensor-core one). Tensor-core policy: the
// fewest splits (at most 64) that keep >= 90% of the CTA slots of every wave busy (2 resident CTAs
// per SM). kCudaCore: enough CTAs to fill the SMs twice (its policy before the tensor-core
// kernel), at most 64 splits. Each sequence divides its own keys among the splits (at least 64 per split, in whole
// 16-key tiles, the rest empty), so any num_splits is correct for any batch: a graph fixes it from
// the longest context it may see.
int32_t PagedDecodeAttentionSplits(int32_t num_seqs, int32_t num_kv_heads, int32_t max_context, int32_t num_sms,
                                   PagedDecodeKernel kernel = PagedDecodeKernel::kAuto,
                                   int32_t min_split_keys = kPagedDecodeMinSplitKeys);

// Floats of `partial` the launch needs (0 when num_splits == 1).
size_t PagedDecodeAttentionPartialFloats(int32_t num_seqs, int32_t num_heads, int32_t head_dim, int32_t num_splits);

// Int32 counters `split_counters` must hold for the in-kernel combine: one per (sequence, KV head).
size_t PagedDecodeAttentionSplitCounters(int32_t num_seqs, int32_t num_kv_heads);

// Whether a launch with these splits combines in the kernel when given `split_counters` (num_splits
// in 2..64); otherwise the combine kernel runs as without counters.
bool PagedDecodeAttentionCombinesInKernel(int32_t num_splits);

struct PagedDecodeAttentionParams {
  const __nv_bfloat16* q = nullptr;        // [num_seqs, num_heads * head_dim]
  const __nv_bfloat16* k_cache = nullptr;  // [num_blocks, num_kv_heads, block_size, head_dim]
  const __nv_bfloat16* v_cache = nullptr;
  __nv_bfloat16* out = nullptr;            // [num_seqs, num_heads * head_dim]
  const int32_t* block_tables = nullptr;   // device [num_seqs, max_blocks_per_seq]
  const int32_t* positions = nullptr;      // device [num_seqs]: the query's position (context - 1)
  float* partial = nullptr;                // device workspace, PagedDecodeAttentionPartialFloats
  // Optional, device [num_seqs * num_kv_heads], all zero before the launch and left zero after it
  // (the combining CTA re-arms its counter, so a captured graph replays with the same buffer): the
  // last split CTA of each (sequence, KV head) combines the partial states instead of a second
  // kernel. Launches on one buffer must be stream-ordered (or programmatic: they wait first).
  int32_t* split_counters = nullptr;
  int32_t num_seqs = 0;
  int32_t num_splits = 1;  // 1..64
  int32_t max_blocks_per_seq = 0;
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t block_size = 0;
  int32_t sliding_window = 0;  // 0: none
  float scale = 1.0f;
  int32_t min_split_keys = kPagedDecodeMinSplitKeys;  // a multiple of 16, as given to PagedDecodeAttentionSplits
  // Fused RoPE and KV write (see above): when qkv is set, q is not read and every field below is
  // required; the launch takes the tensor-core kernel (cudaErrorInvalidValue where it cannot).
  const __nv_bfloat16* qkv = nullptr;     // [num_seqs, (num_heads + 2 * num_kv_heads) * head_dim]
  const float* rope_cos = nullptr;        // [max_positions, rotary_dim / 2], positions[seq] < max_positions
  const float* rope_sin = nullptr;
  const int64_t* slot_mapping = nullptr;  // device [num_seqs]: the new key's slot in the cache
  __nv_bfloat16* k_cache_out = nullptr;   // k_cache and v_cache, written at slot_mapping
  __nv_bfloat16* v_cache_out = nullptr;
  int32_t rotary_dim = 0;
  PagedDecodeKernel kernel = PagedDecodeKernel::kAuto;
  bool programmatic = false;  // programmatic dependent launch (see above); no effect before sm_90
};

// cudaErrorInvalidValue for an unsupported shape (or kernel choice) or a missing workspace.
cudaError_t LaunchPagedDecodeAttention(const PagedDecodeAttentionParams& params, cudaStream_t stream);

}  // namespace tandem::kernels
