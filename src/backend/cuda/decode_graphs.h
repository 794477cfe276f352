// DecodeGraphs: the CUDA backend's decode-step graphs and the fixed buffers they read.
//
// A graph records device addresses, so everything a decode step reads per step lives at fixed
// addresses allocated once by Reserve(): token ids, positions, slots and block tables (pinned host
// staging + device copy, one async copy per step), and the split-KV attention workspace. Where the
// arrays start depends on (batch, table width), so a graph's key must determine both. Weights,
// the KV cache and the model's activation workspace are fixed by their owners. Graphs are kept per
// key (the padded batch size); a captured graph is replayed with one cudaGraphLaunch.
//
// Capture is lazy: the first step of a key runs its ops eagerly (which also lets cuBLAS pick and
// load its kernels outside a capture) and is then captured (capturing runs nothing); later steps
// replay. A capture that fails (an op the driver refuses to record) is logged and the key stays
// eager; the step's result is never lost.
//
// Threading: used by the backend's one driving thread. Constant after Reserve: the buffers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <span>
#include <unordered_map>
#include <unordered_set>

#include "backend/backend.h"

namespace tandem {

// Device pointers of the staged decode batch.
struct StagedDecodeInputs {
  const int32_t* token_ids = nullptr;     // [num_seqs]
  const int32_t* positions = nullptr;     // [num_seqs]
  const int64_t* slot_mapping = nullptr;  // [num_seqs], negative: a padded row
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  int32_t num_seqs = 0;
  int32_t max_blocks_per_seq = 0;
  int32_t max_position = -1;
};

class DecodeGraphs {
 public:
  DecodeGraphs() = default;
  ~DecodeGraphs();
  DecodeGraphs(const DecodeGraphs&) = delete;
  DecodeGraphs& operator=(const DecodeGraphs&) = delete;

  // Allocates the fixed buffers: inputs for `max_batch` sequences with tables of
  // `max_blocks_per_seq` blocks, and `partial_floats` floats of attention workspace.
  Status Reserve(cudaStream_t stream, int32_t max_batch, int32_t max_blocks_per_seq, size_t partial_floats);
  bool reserved() const { return stream_ != nullptr; }
  int32_t max_batch() const { return max_batch_; }
  int32_t max_blocks_per_seq() const { return max_blocks_per_seq_; }
  float* partial() const { return partial_; }
  // [max_batch, 3]: (i, i, 1), the work items of a decode batch for the general attention kernel.
  const int32_t* decode_work_items() const { return work_items_; }
  size_t partial_floats() const { return partial_floats_; }

  // Validates and stages one decode batch (see Backend::StageDecodeInputs).
  Status Stage(std::span<const int32_t> token_ids, const AttentionMetadata& meta, int64_t num_kv_blocks);
  const StagedDecodeInputs& staged() const { return staged_; }
  // Whether ops run inside Run()'s record(): they must read staged() and must not upload.
  bool active() const { return active_; }

  Status Run(int32_t key, bool capture, const std::function<Status()>& record);
  void Clear();
  // Programmatic edges (kernel launches with programmatic stream serialization that the capture
  // kept as such) of the last graph captured; 0 before any.
  size_t last_programmatic_edges() const { return last_programmatic_edges_; }

 private:
  Status Capture(int32_t key, const std::function<Status()>& record);

  cudaStream_t stream_ = nullptr;
  int32_t max_batch_ = 0;
  int32_t max_blocks_per_seq_ = 0;
  std::byte* host_ = nullptr;  // pinned staging: ids | positions | slots | tables
  std::byte* device_ = nullptr;
  size_t bytes_ = 0;
  cudaEvent_t copied_ = nullptr;  // the last staging copy; the host rewrites host_ after it
  bool copy_pending_ = false;
  float* partial_ = nullptr;
  int32_t* work_items_ = nullptr;
  size_t partial_floats_ = 0;
  StagedDecodeInputs staged_;
  bool active_ = false;
  std::unordered_map<int32_t, cudaGraphExec_t> graphs_;
  std::unordered_set<int32_t> failed_;  // keys whose capture failed: eager
  size_t last_programmatic_edges_ = 0;
};

}  // namespace tandem
