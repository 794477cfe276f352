#include "router/worker_load_view.h"

#include <algorithm>

namespace tandem {

void WorkerLoadView::Admit(const Admission& admission) { live_.push_back(admission); }

void WorkerLoadView::Retire(uint64_t id, uint64_t latest_round) {
  auto it = std::find_if(live_.begin(), live_.end(), [&](const Admission& a) { return a.id == id; });
  if (it == live_.end()) return;
  if (CountedBy(*it, answered_round_)) {
    left_.prompt_tokens += it->prompt_tokens;
    ++left_.requests;
  }
  if (answered_round_ < latest_round && CountedBy(*it, latest_round)) {
    // The poll out now began after it was admitted and before it left: its answer may count it.
    left_while_polling_.prompt_tokens += it->prompt_tokens;
    ++left_while_polling_.requests;
  }
  live_.erase(it);
}

void WorkerLoadView::Answer(uint64_t round, const Report& report) {
  report_ = report;
  answered_round_ = round;
  left_ = left_while_polling_;
  left_while_polling_ = Counted();
}

int64_t WorkerLoadView::QueuedPromptTokens() const {
  int64_t queued = std::max<int64_t>(report_.queued_prompt_tokens - left_.prompt_tokens, 0);
  for (const Admission& a : live_) {
    if (!CountedBy(a, answered_round_)) queued += a.uncached_tokens;
  }
  return queued;
}

int64_t WorkerLoadView::AvailableBlocks() const {
  int64_t available = report_.available_blocks;
  for (const Admission& a : live_) {
    if (!CountedBy(a, answered_round_)) available -= a.kv_blocks;
  }
  return available;
}

int32_t WorkerLoadView::BatchLoad() const {
  int32_t batch = std::max(report_.batch - left_.requests, 0);
  for (const Admission& a : live_) {
    if (!CountedBy(a, answered_round_)) ++batch;
  }
  return batch;
}

}  // namespace tandem
