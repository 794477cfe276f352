#include "scheduler/scheduler.h"

#include <algorithm>

#include "tandem/check.h"

namespace tandem {

Scheduler::Scheduler(SchedulerConfig config, BlockManager* blocks,
                     std::unique_ptr<SchedulingPolicy> policy)
    : config_(config), blocks_(blocks), policy_(std::move(policy)) {
  TANDEM_CHECK(config_.max_num_batched_tokens > 0 && config_.max_num_seqs > 0);
}

void Scheduler::Add(Sequence* seq) {
  TANDEM_CHECK(seq->state() == SequenceState::kWaiting);
  waiting_.push_back(seq);
}

void Scheduler::Remove(Sequence* seq) {
  std::erase(running_, seq);
  std::erase(waiting_, seq);
  blocks_->FreeSequence(seq->id());
}

void Scheduler::Detach(Sequence* seq) {
  TANDEM_CHECK(std::find(running_.begin(), running_.end(), seq) != running_.end());
  std::erase(running_, seq);
}

void Scheduler::AddRunning(Sequence* seq) {
  TANDEM_CHECK(seq->state() == SequenceState::kDecoding);
  TANDEM_CHECK(blocks_->HasSequence(seq->id()));
  TANDEM_CHECK(std::find(running_.begin(), running_.end(), seq) == running_.end());
  running_.push_back(seq);
}

void Scheduler::Preempt(Sequence* seq) {
  // running -> waiting: recompute later; the prefix cache may keep part of its KV.
  blocks_->FreeSequence(seq->id());
  std::erase(running_, seq);
  seq->num_computed_tokens = 0;
  seq->num_preemptions++;
  seq->TransitionTo(SequenceState::kWaiting);
  waiting_.push_back(seq);
}

SchedulerOutput Scheduler::Schedule() {
  SchedulerOutput out;
  int32_t budget = config_.max_num_batched_tokens;
  auto precedes = [this](const Sequence* a, const Sequence* b) { return policy_->Precedes(*a, *b); };

  // 1. Running sequences, highest precedence first: decode tokens and continuing prefill chunks.
  std::stable_sort(running_.begin(), running_.end(), precedes);
  std::vector<Sequence*> order = running_;
  std::vector<Sequence*> scheduled_running;
  for (Sequence* seq : order) {
    if (std::find(out.preempted.begin(), out.preempted.end(), seq) != out.preempted.end()) continue;
    if (budget == 0) break;
    const int32_t remaining = seq->num_tokens() - seq->num_computed_tokens;
    TANDEM_CHECK(remaining > 0) << "running sequence " << seq->id() << " has nothing to compute";
    const int32_t n = std::min(remaining, budget);
    bool scheduled = false;
    while (true) {
      if (blocks_->AppendSlots(seq->id(), seq->num_computed_tokens + n).ok()) {
        scheduled = true;
        break;
      }
      // Out of blocks: evict the lowest-precedence running sequence not yet scheduled this step.
      Sequence* victim = nullptr;
      for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
        if (std::find(scheduled_running.begin(), scheduled_running.end(), *it) ==
            scheduled_running.end()) {
          victim = *it;
          break;
        }
      }
      TANDEM_CHECK(victim != nullptr);
      Preempt(victim);
      out.preempted.push_back(victim);
      if (victim == seq) break;
    }
    if (!scheduled) continue;
    scheduled_running.push_back(seq);
    out.scheduled.push_back({seq, n, seq->num_computed_tokens + n == seq->num_tokens()});
    budget -= n;
  }

  // 2. Admit waiting sequences in policy order, unless this step had to preempt.
  if (out.preempted.empty()) {
    std::stable_sort(waiting_.begin(), waiting_.end(), precedes);
    while (!waiting_.empty() && budget > 0 &&
           static_cast<int32_t>(running_.size()) < config_.max_num_seqs) {
      Sequence* seq = waiting_.front();
      const int32_t cached = blocks_->NumCachedPrefixTokens(seq->tokens());
      const int32_t remaining = seq->num_tokens() - cached;
      if (!config_.enable_chunked_prefill && remaining > budget) break;
      const int32_t n = std::min(remaining, budget);
      auto allocated = blocks_->AllocateSequence(seq->id(), seq->tokens(), cached + n);
      if (!allocated.ok()) break;  // head of line waits for blocks
      TANDEM_CHECK_EQ(*allocated, cached);
      waiting_.pop_front();
      // waiting -> prefilling (holds KV blocks from now on)
      seq->TransitionTo(SequenceState::kPrefilling);
      seq->num_computed_tokens = cached;
      seq->num_cached_tokens = cached;
      running_.push_back(seq);
      out.scheduled.push_back({seq, n, cached + n == seq->num_tokens()});
      budget -= n;
    }
  }
  out.num_batched_tokens = config_.max_num_batched_tokens - budget;
  return out;
}

}  // namespace tandem
