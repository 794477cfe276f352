// CudaBackend: decode-step graphs (see decode_graphs.h and Backend::RunDecodeGraph).
#include <algorithm>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"
#include "kernels/paged_decode_attention.cuh"

namespace tandem {

Status CudaBackend::ReserveDecodeGraphs(int32_t max_batch, int32_t max_blocks_per_seq, int32_t block_size,
                                        const AttentionParams& params) {
  TANDEM_RETURN_IF_ERROR(CheckSupported(params));
  if (max_batch < 1 || max_blocks_per_seq < 1 || block_size < 1) {
    return InvalidArgumentError("cuda backend: decode graphs need a positive batch, table and block size");
  }
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  // The split-KV attention workspace for the largest split count of any batch size, at the
  // fewest keys per split any option allows (fewer keys, never fewer splits; the option may change).
  const int32_t max_context = max_blocks_per_seq * block_size;
  size_t partial = 0;
  for (int32_t b = 1; b <= max_batch; ++b) {
    const int32_t splits = kernels::PagedDecodeAttentionSplits(b, params.num_kv_heads, max_context, num_sms_,
                                                               DecodeAttentionKernel(params.head_dim), 16);
    partial = std::max(partial, kernels::PagedDecodeAttentionPartialFloats(b, params.num_heads, params.head_dim, splits));
  }
  TANDEM_RETURN_IF_ERROR(decode_graphs_.Reserve(stream_, max_batch, max_blocks_per_seq, partial));
  graph_block_size_ = block_size;
  return OkStatus();
}

Status CudaBackend::StageDecodeInputs(std::span<const int32_t> token_ids, const AttentionMetadata& meta,
                                      int64_t num_kv_blocks) {
  if (meta.block_size != graph_block_size_) {
    return InvalidArgumentError("cuda backend: decode graphs were reserved for blocks of " +
                                std::to_string(graph_block_size_) + " tokens, not " +
                                std::to_string(meta.block_size));
  }
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  return decode_graphs_.Stage(token_ids, meta, num_kv_blocks);
}

Status CudaBackend::RunDecodeGraph(int32_t key, bool capture, const std::function<Status()>& record) {
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  return decode_graphs_.Run(key, capture, record);
}

void CudaBackend::ClearDecodeGraphs() {
  // Replays in flight finish before their graphs go.
  if (SelectDevice().ok()) (void)cudaStreamSynchronize(stream_);
  decode_graphs_.Clear();
}

StatusOr<DeviceAttentionView> CudaBackend::AttentionView(const AttentionParams& params,
                                                         const AttentionMetadata& meta,
                                                         const KvLayerView& cache) {
  if (decode_graphs_.active()) {
    const StagedDecodeInputs& in = decode_graphs_.staged();
    TANDEM_CHECK_EQ(meta.num_tokens, in.num_seqs);
    DeviceAttentionView view;
    view.positions = in.positions;
    view.slot_mapping = in.slot_mapping;
    view.block_tables = in.block_tables;
    view.max_position = in.max_position;
    return view;
  }
  return attention_metadata_.Prepare(meta, AttentionTileTokens(params), cache.k.dim(0));
}

}  // namespace tandem
