#include "router/request_stream.h"

#include <algorithm>
#include <iterator>
#include <utility>

namespace tandem {

void MergeOutputs(RequestOutput& into, RequestOutput next) {
  // Only the tokens accumulate; everything else (state, counts, every timing) is the later
  // output's, so a field added to RequestOutput is never lost when outputs merge.
  std::vector<TokenOutput> tokens = std::move(into.new_tokens);
  tokens.insert(tokens.end(), std::make_move_iterator(next.new_tokens.begin()),
                std::make_move_iterator(next.new_tokens.end()));
  into = std::move(next);
  into.new_tokens = std::move(tokens);
}

RequestStream::RequestStream(size_t max_queued) : max_queued_(std::max<size_t>(max_queued, 1)) {}

void RequestStream::Push(RequestOutput output) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (queue_.size() >= max_queued_) {
      MergeOutputs(queue_.back(), std::move(output));
    } else {
      queue_.push_back(std::move(output));
    }
  }
  ready_.notify_one();
}

std::vector<RequestOutput> RequestStream::Pop(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  ready_.wait_for(lock, timeout, [&] { return !queue_.empty(); });
  std::vector<RequestOutput> out(std::make_move_iterator(queue_.begin()),
                                 std::make_move_iterator(queue_.end()));
  queue_.clear();
  return out;
}

size_t RequestStream::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size();
}

}  // namespace tandem
