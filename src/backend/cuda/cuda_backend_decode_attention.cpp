// CudaBackend: split-KV decode attention (kernels/paged_decode_attention.cuh) for decode-only
// batches, eager and inside decode graphs, with RoPE and the KV write fused into it where it can.
#include <string>

#include "backend/cuda/attention_launch_params.h"
#include "backend/cuda/bf16_tensor.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"
#include "kernels/paged_attention.cuh"
#include "kernels/paged_decode_attention.cuh"

namespace tandem {

kernels::PagedDecodeKernel CudaBackend::DecodeAttentionKernel(int32_t head_dim) const {
  return options_.cuda_core_decode_attention || !kernels::PagedDecodeAttentionTensorCores(head_dim)
             ? kernels::PagedDecodeKernel::kCudaCore
             : kernels::PagedDecodeKernel::kTensorCore;
}

void CudaBackend::SetSmallBatchDecodeAttention(kernels::PagedDecodeAttentionParams* p) const {
  if (p->num_seqs > kernels::kSmallMGemvMaxRows) return;
  // After the small-M GEMV (and RoPE), which launch programmatically for these batches.
  p->programmatic = options_.programmatic_decode_attention && programmatic_launch_;
  if (options_.decode_attention_combines_in_kernel &&
      kernels::PagedDecodeAttentionSplitCounters(p->num_seqs, p->num_kv_heads) <= kAttentionSplitCounters) {
    p->split_counters = attention_split_counters_;
  }
}

bool CudaBackend::IsDecodeOnly(const AttentionParams& params, const AttentionMetadata& meta) const {
  if (!kernels::PagedDecodeAttentionSupports(params.head_dim, params.num_heads / params.num_kv_heads)) return false;
  if (decode_graphs_.active()) return true;  // a decode graph step: one query per sequence
  bool decode_only = meta.num_tokens == meta.num_seqs;
  for (int32_t i = 0; decode_only && i <= meta.num_seqs; ++i) decode_only = meta.query_start[i] == i;
  return decode_only;
}

Status CudaBackend::LaunchDecodeAttention(kernels::PagedDecodeAttentionParams p, const AttentionParams& params,
                                          int32_t max_context) {
  p.kernel = DecodeAttentionKernel(params.head_dim);
  p.min_split_keys = options_.decode_attention_min_split_keys;
  p.num_splits = kernels::PagedDecodeAttentionSplits(p.num_seqs, params.num_kv_heads, max_context, num_sms_, p.kernel,
                                                     p.min_split_keys);
  const size_t floats =
      kernels::PagedDecodeAttentionPartialFloats(p.num_seqs, params.num_heads, params.head_dim, p.num_splits);
  if (decode_graphs_.active()) {
    TANDEM_CHECK_LE(floats, decode_graphs_.partial_floats());
    p.partial = decode_graphs_.partial();
  } else {
    TANDEM_RETURN_IF_ERROR(attention_partial_.Reserve(floats * sizeof(float), stream_));
    p.partial = reinterpret_cast<float*>(attention_partial_.data());
  }
  SetSmallBatchDecodeAttention(&p);  // inside a graph: fixed per bucket (the bucket size decides)
  TANDEM_CUDA_RETURN_IF_ERROR(kernels::LaunchPagedDecodeAttention(p, stream_));
  return OkStatus();
}

Status CudaBackend::StagedDecodeAttention(const Tensor& q, KvLayerView cache, const AttentionParams& params,
                                          Tensor out) {
  const StagedDecodeInputs& in = decode_graphs_.staged();
  const int32_t group = params.num_heads / params.num_kv_heads;
  if (!kernels::PagedDecodeAttentionSupports(params.head_dim, group)) {
    // Head dims without a split-KV instance: the general kernel over the fixed work items
    // (one per sequence), whose grid depends on the batch size alone.
    auto p = PagedAttentionLaunchParams<kernels::PagedAttentionParams>(
        q, cache, out, in.block_tables, in.positions, in.max_blocks_per_seq, graph_block_size_, params);
    p.work_items = decode_graphs_.decode_work_items();
    p.num_work_items = in.num_seqs;
    TANDEM_CUDA_RETURN_IF_ERROR(kernels::LaunchPagedAttention(p, stream_));
    return OkStatus();
  }
  auto p = PagedAttentionLaunchParams<kernels::PagedDecodeAttentionParams>(
      q, cache, out, in.block_tables, in.positions, in.max_blocks_per_seq, graph_block_size_, params);
  p.num_seqs = in.num_seqs;
  // Splits fixed for the batch size and table width (never from this step's lengths): the longest
  // context the tables can hold.
  return LaunchDecodeAttention(p, params, in.max_blocks_per_seq * graph_block_size_);
}

bool CudaBackend::FusesRopeIntoDecodeAttention(const AttentionParams& params, const RopeTables& rope,
                                               const AttentionMetadata& meta) const {
  return options_.fuse_rope_decode_attention && meta.num_tokens > 0 && IsDecodeOnly(params, meta) &&
         DecodeAttentionKernel(params.head_dim) == kernels::PagedDecodeKernel::kTensorCore &&
         kernels::PagedDecodeAttentionFusesRope(params.head_dim, rope.rotary_dim);
}

Status CudaBackend::RopeWriteKvAttention(const Tensor& qkv, Tensor q_scratch, const RopeTables& rope,
                                         const AttentionParams& params, const AttentionMetadata& meta,
                                         KvLayerView cache, Tensor out) {
  if (!FusesRopeIntoDecodeAttention(params, rope, meta)) {
    return Backend::RopeWriteKvAttention(qkv, q_scratch, rope, params, meta, cache, out);
  }
  TANDEM_RETURN_IF_ERROR(CheckRopeInputs(qkv, rope, params, cache, meta));
  CheckBf16(out, "attention output");
  TANDEM_CHECK_GE(out.numel(), static_cast<int64_t>(meta.num_tokens) * params.num_heads * params.head_dim);
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  TANDEM_ASSIGN_OR_RETURN(DeviceAttentionView view, AttentionView(params, meta, cache));
  TANDEM_RETURN_IF_ERROR(CheckRopePositions(view, rope));
  const bool graph = decode_graphs_.active();
  const int32_t max_blocks = graph ? decode_graphs_.staged().max_blocks_per_seq : meta.max_blocks_per_seq;
  // q is not read: the kernel rotates it from qkv.
  auto p = PagedAttentionLaunchParams<kernels::PagedDecodeAttentionParams>(
      Tensor(), cache, out, view.block_tables, view.positions, max_blocks, meta.block_size, params);
  p.num_seqs = graph ? decode_graphs_.staged().num_seqs : meta.num_seqs;
  p.qkv = static_cast<const __nv_bfloat16*>(qkv.data);
  p.rope_cos = rope.cos.as<const float>();
  p.rope_sin = rope.sin.as<const float>();
  p.rotary_dim = rope.rotary_dim;
  p.slot_mapping = view.slot_mapping;
  p.k_cache_out = static_cast<__nv_bfloat16*>(cache.k.data);
  p.v_cache_out = static_cast<__nv_bfloat16*>(cache.v.data);
  return LaunchDecodeAttention(p, params, graph ? max_blocks * graph_block_size_ : view.max_position + 1);
}

}  // namespace tandem
