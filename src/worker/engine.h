// Engine: one worker's continuous-batching loop over a model, a paged KV cache and a scheduler.
//
// Ownership: the engine owns the backend, the weights, the model, the KV cache, the block manager,
// the scheduler and every live Sequence. Threading: not thread-safe; one thread (the worker's
// engine thread) calls AddRequest / Abort / Step. Front ends talk to that thread through queues.
//
// A step: Schedule() -> build the flat token batch -> model forward -> sample the sequences whose
// chunk reached their end -> commit computed KV to the prefix cache -> check stop conditions ->
// free finished sequences -> return outputs.
//
// Roles (EngineConfig::role; see scheduler/sequence.h for the states):
//   colocated: prefill and decode here.
//   prefill:   a sequence that samples its first token (and does not stop there) leaves the batch
//              in kTransferringKv, keeping its blocks; its output with the first token goes out at
//              once (TTFT). The caller then takes it (TakeTransferReady), reads its KV
//              (ReadKvForTransfer) and releases it (ReleaseTransferred: blocks freed, the request
//              is finished here with FinishReason::kNone, "handed off").
//   decode:    AddTransferredRequest reserves the blocks for the incoming KV before any byte moves
//              (all or nothing, so admission counts KV in flight); the sequence waits in
//              kTransferringKv until CompleteTransfer writes the KV and moves it to kDecoding and
//              into the running batch. Abort (cancel, failed transfer) frees the reservation.
//              Requests may also arrive whole (AddRequest): a decode worker can still prefill, e.g.
//              to recompute a preempted sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "backend/backend.h"
#include "kv/block_manager.h"
#include "kv/kv_cache.h"
#include "model/llama_model.h"
#include "model/weight_source.h"
#include "sampling/sampler.h"
#include "scheduler/scheduler.h"
#include "tandem/request.h"
#include "transfer/kv_handoff.h"
#include "transfer/kv_streamer.h"

namespace tandem {

enum class EngineRole : uint8_t { kColocated, kPrefill, kDecode };
std::string_view EngineRoleName(EngineRole role);
// "colocated", "prefill" or "decode"; InvalidArgument otherwise.
StatusOr<EngineRole> ParseEngineRole(std::string_view name);

struct EngineConfig {
  EngineRole role = EngineRole::kColocated;
  int32_t block_size = 16;
  // KV cache size: num_kv_blocks if > 0, else as many blocks as kv_cache_bytes holds.
  int32_t num_kv_blocks = 0;
  int64_t kv_cache_bytes = 512LL << 20;
  int32_t max_num_batched_tokens = 2048;
  int32_t max_num_seqs = 256;
  // Longest sequence (prompt + output). 0: the model's max_position_embeddings.
  int64_t max_model_len = 0;
  bool enable_prefix_caching = true;
  bool enable_chunked_prefill = true;
  // Decode-only steps through the backend's graphs (CUDA graphs; LlamaModel::EnableDecodeGraphs),
  // where the backend has them. Backends without graphs ignore it.
  bool enable_cuda_graphs = true;
  std::string scheduling_policy = "fcfs";
  // Seeds the per-request seeds of requests that do not bring one.
  uint64_t seed = 0;

  Status Validate() const;
};

struct EngineStats {
  BlockManagerStats blocks;
  size_t num_waiting = 0;
  size_t num_running = 0;
  size_t num_transferring = 0;  // in kTransferringKv (holding blocks, outside the batch)
  int64_t num_steps = 0;
  int64_t num_preemptions = 0;
};

class Engine {
 public:
  // Takes ownership of the backend and the weights. Loads the model (validating every tensor).
  static StatusOr<std::unique_ptr<Engine>> Create(const EngineConfig& config,
                                                  const ModelConfig& model_config,
                                                  std::unique_ptr<WeightSource> weights,
                                                  std::unique_ptr<Backend> backend);
  ~Engine();

  const EngineConfig& config() const { return config_; }
  const ModelConfig& model_config() const { return model_->config(); }
  int64_t max_model_len() const { return max_model_len_; }

  // Validates and queues a request. InvalidArgument (bad ids, empty or too long prompt, bad
  // sampling parameters, duplicate live id) leaves the engine untouched.
  Status AddRequest(Request request);

  // Aborts a live request at any point (waiting, mid-prefill, waiting for KV, mid-decode): frees
  // everything it holds and emits a final output with FinishReason::kAbort on the next Step() —
  // or, when `error` is not OK (a failed KV transfer), kError with that status. Returns false if
  // no live request has this id.
  bool Abort(const std::string& request_id, Status error = OkStatus());

  // Runs one step (if there is work) and returns outputs: new tokens of running requests and the
  // final output of every request that finished or was aborted since the last call.
  StatusOr<std::vector<RequestOutput>> Step();

  // --- disaggregation (see the roles above) --------------------------------------------------------
  // Prefill role: ids of the sequences that entered kTransferringKv since the last call.
  std::vector<std::string> TakeTransferReady();
  // Prefill role: copies the KV of a kTransferringKv sequence's prompt (all layers, K and V) into
  // a handoff. NotFound / FailedPrecondition when no such sequence waits for transfer.
  StatusOr<KvHandoff> ReadKvForTransfer(const std::string& request_id);
  // Prefill role: frees a kTransferringKv sequence's blocks and returns its final output
  // (finished, FinishReason::kNone: the request goes on elsewhere). NotFound if not waiting.
  StatusOr<RequestOutput> ReleaseTransferred(const std::string& request_id);

  // Decode role: validates like AddRequest, then reserves blocks for the prompt's KV and the
  // first decode step. ResourceExhausted (nothing changed) when the blocks are not free now.
  Status AddTransferredRequest(Request request);
  // Decode role: writes the received KV into the reserved blocks, appends the first token (not
  // emitted again: the prefill worker streamed it) and moves the sequence to kDecoding. On an
  // error the reservation stays; the caller aborts it.
  Status CompleteTransfer(const KvHandoff& handoff);
  // The geometry a handoff must have to be accepted here (and that ReadKvForTransfer produces).
  const KvGeometry& kv_geometry() const { return kv_geometry_; }
  // Prefill role, optional (not owned; must outlive the engine's steps): requests it has a route
  // for leave through it during the step that completes their prefill (kv_streamer.h), and
  // ReadKvForTransfer returns their handoff with `streamed` set and no data.
  void SetKvStreamer(KvStreamer* streamer) { streamer_ = streamer; }
  // What a device transport needs to read and write this engine's cache.
  Backend& backend() { return *backend_; }
  std::span<const KvLayerView> kv_layers() const { return kv_layers_; }

  bool HasUnfinished() const { return !sequences_.empty() || !pending_final_.empty(); }
  // Whether Step() has anything to do (sequences waiting for KV do not count).
  bool HasStepWork() const {
    return scheduler_->HasWork() || !pending_final_.empty() || !deferred_streams_.empty();
  }
  EngineStats Stats() const;
  // TANDEM_CHECKs the KV accounting and that no finished sequence holds blocks.
  void CheckInvariants() const;

 private:
  Engine() = default;
  Status ValidateRequest(const Request& request) const;
  Sequence* FindTransferring(const std::string& request_id);
  RequestOutput MakeOutput(Sequence& seq, bool final);
  void FinishSequence(Sequence& seq, FinishReason reason);
  bool CheckStop(const Sequence& seq, TokenId token, FinishReason* reason) const;
  // Prefill role with a streamer: requests whose KV could not start during their last prefill
  // step (no staging room) go now, without overlap, once there is room.
  void StreamDeferred();

  EngineConfig config_;
  int64_t max_model_len_ = 0;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<WeightSource> weights_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<KvCache> kv_cache_;
  std::vector<KvLayerView> kv_layers_;  // Constant after construction
  KvGeometry kv_geometry_;              // Constant after construction
  std::unique_ptr<BlockManager> blocks_;
  std::unique_ptr<Scheduler> scheduler_;
  std::vector<int64_t> eos_ids_;

  SeqId next_seq_id_ = 1;
  std::mt19937_64 seed_rng_;
  std::unordered_map<std::string, std::unique_ptr<Sequence>> sequences_;  // live, by request id
  std::vector<RequestOutput> pending_final_;  // finished outside Step (aborts)
  std::vector<std::string> transfer_ready_;   // prefill role: entered kTransferringKv
  KvStreamer* streamer_ = nullptr;            // prefill role, optional, not owned
  std::unordered_set<std::string> streamed_;  // kTransferringKv, KV sent by the streamer
  std::vector<std::string> deferred_streams_; // kTransferringKv, to be streamed when room frees
  int64_t num_steps_ = 0;
  int64_t num_preemptions_ = 0;

  // Per-step host buffers, reused.
  std::vector<int32_t> token_ids_, positions_, query_start_, context_lens_, block_tables_,
      logits_rows_;
  std::vector<int64_t> slot_mapping_;
  std::vector<SampleInput> sample_inputs_;    // one per sampled row, in batch order
  std::vector<SampleOutput> sample_outputs_;
};

}  // namespace tandem
