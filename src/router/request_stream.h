// RequestStream: hands one request's outputs from the engine thread (producer, never blocks) to
// the thread serving its RPC (consumer, waits with a timeout so it can poll for cancellation).
//
// Bounded: at most `max_queued` outputs wait; beyond that a new output is merged into the newest
// waiting one (tokens appended, counters and timings replaced), so a slow client costs memory
// proportional to its tokens, never a blocked engine thread or a lost token.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <vector>

#include "tandem/request.h"

namespace tandem {

// Appends `next` (the later output of the same request) to `into`: the tokens accumulate, every
// other field (finish, counts, timings) becomes next's.
void MergeOutputs(RequestOutput& into, RequestOutput next);

class RequestStream {
 public:
  explicit RequestStream(size_t max_queued = 64);

  // Producer (engine thread). Never blocks on the consumer.
  void Push(RequestOutput output);

  // Consumer. Waits up to `timeout` for outputs and returns all waiting ones (empty on timeout).
  std::vector<RequestOutput> Pop(std::chrono::milliseconds timeout);

  // Outputs waiting right now (for tests).
  size_t size() const;

 private:
  const size_t max_queued_;  // Constant after construction
  mutable std::mutex mu_;
  std::condition_variable ready_;
  std::deque<RequestOutput> queue_;  // GUARDED_BY(mu_)
};

// Counts an RPC as an open stream for the scope's life (the services' stats report the count).
class OpenStreamScope {
 public:
  explicit OpenStreamScope(std::atomic<int32_t>& count) : count_(count) { ++count_; }
  ~OpenStreamScope() { --count_; }
  OpenStreamScope(const OpenStreamScope&) = delete;
  OpenStreamScope& operator=(const OpenStreamScope&) = delete;

 private:
  std::atomic<int32_t>& count_;
};

}  // namespace tandem
