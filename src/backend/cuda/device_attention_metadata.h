// DeviceAttentionMetadata: the per-step AttentionMetadata (host memory, built by the model runner)
// in device memory, uploaded once per step with one host -> device copy and reused by every
// layer's RopeAndWriteKv and Attention.
//
// Reuse is decided by content, not by address: the engine refills the same host vectors every step,
// so the spans' pointers repeat while their contents change. Comparing is a memcmp of the few
// metadata bytes per call; uploading also validates the metadata (positions inside their sequence's
// context, block ids and slots inside the cache) and plans the attention work items.
#pragma once

#include <cstdint>

#include "backend/backend.h"
#include "backend/cuda/pinned_upload.h"

namespace tandem {

// Device pointers into one upload; valid until the next Prepare() that uploads.
struct DeviceAttentionView {
  const int32_t* positions = nullptr;     // [num_tokens]
  const int64_t* slot_mapping = nullptr;  // [num_tokens]
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  const int32_t* work_items = nullptr;    // [num_work_items, 3]: (seq, first token, count)
  int32_t num_work_items = 0;
  int32_t max_position = -1;              // largest position in the batch
};

// OutOfRange / InvalidArgument unless `meta` is consistent and every position, slot and block id
// it names lies inside its context and a cache of `num_blocks` blocks (negative slots: not written).
Status ValidateAttentionMetadata(const AttentionMetadata& meta, int64_t num_blocks);

class DeviceAttentionMetadata {
 public:
  Status Init(cudaStream_t stream) { return upload_.Init(stream); }

  // The device view of `meta`, uploading it unless the last upload holds the same metadata for the
  // same `tile_tokens` (tokens per attention work item) and `num_blocks` (cache blocks the ids were
  // validated against). OutOfRange / InvalidArgument for inconsistent metadata.
  StatusOr<DeviceAttentionView> Prepare(const AttentionMetadata& meta, int32_t tile_tokens,
                                        int64_t num_blocks);

 private:
  bool Matches(const AttentionMetadata& meta, int32_t tile_tokens, int64_t num_blocks) const;

  PinnedUpload upload_;
  bool valid_ = false;
  // What the last upload holds: scalars here, spans in upload_.host() at the offsets below.
  int32_t num_seqs_ = 0, num_tokens_ = 0, max_blocks_per_seq_ = 0, block_size_ = 0;
  int32_t tile_tokens_ = 0;
  int64_t num_blocks_ = 0;
  size_t slots_off_ = 0, positions_off_ = 0, tables_off_ = 0, query_start_off_ = 0,
         context_lens_off_ = 0, work_off_ = 0;
  DeviceAttentionView view_;
};

}  // namespace tandem
