// Scheduler: forms each step's batch — decode tokens of running sequences plus chunked prefill —
// under a token budget (max_num_batched_tokens) and a sequence cap (max_num_seqs), taking KV
// blocks from the BlockManager and preempting (recompute) when they run out. Which sequence goes
// first and which is evicted is the SchedulingPolicy's call; this class is the mechanism.
//
// The scheduler is the transaction boundary of the engine: Add -> Schedule -> (engine runs the
// step, then updates num_computed_tokens) -> Finish. Owned by the engine thread; no model needed,
// so it is unit-tested on its own.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "kv/block_manager.h"
#include "scheduler/scheduling_policy.h"
#include "scheduler/sequence.h"

namespace tandem {

struct SchedulerConfig {
  int32_t max_num_batched_tokens = 2048;  // tokens per step, decode and prefill together
  int32_t max_num_seqs = 256;             // sequences per step
  bool enable_chunked_prefill = true;     // a prompt may be split across steps
};

struct ScheduledSequence {
  Sequence* seq = nullptr;
  int32_t num_tokens = 0;   // tokens to compute this step, from seq->num_computed_tokens
  bool samples = false;     // this chunk reaches the end of the sequence: sample a token
};

struct SchedulerOutput {
  std::vector<ScheduledSequence> scheduled;
  std::vector<Sequence*> preempted;  // moved back to waiting this step (KV freed)
  int32_t num_batched_tokens = 0;
  bool empty() const { return scheduled.empty(); }
};

class Scheduler {
 public:
  Scheduler(SchedulerConfig config, BlockManager* blocks, std::unique_ptr<SchedulingPolicy> policy);

  const SchedulerConfig& config() const { return config_; }
  const SchedulingPolicy& policy() const { return *policy_; }

  // Queues a kWaiting sequence. The scheduler never owns sequences; the engine keeps them alive
  // until Finish/Abort.
  void Add(Sequence* seq);
  // Removes a sequence from whichever queue holds it and frees its KV blocks (finish or abort).
  void Remove(Sequence* seq);
  // Disaggregation. Detach: takes a running sequence out of the running list but leaves its KV
  // blocks allocated (a prefill worker's sequence whose KV is being read for transfer).
  // AddRunning: puts a kDecoding sequence whose blocks were allocated outside Schedule (a decode
  // worker's sequence whose KV just arrived) into the running list.
  void Detach(Sequence* seq);
  void AddRunning(Sequence* seq);

  SchedulerOutput Schedule();

  size_t num_waiting() const { return waiting_.size(); }
  size_t num_running() const { return running_.size(); }
  bool HasWork() const { return !waiting_.empty() || !running_.empty(); }

 private:
  void Preempt(Sequence* seq);

  SchedulerConfig config_;
  BlockManager* blocks_;
  std::unique_ptr<SchedulingPolicy> policy_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;  // hold KV blocks
};

}  // namespace tandem
