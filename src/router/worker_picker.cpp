#include "router/worker_picker.h"

#include <algorithm>
#include <tuple>

#include "tandem/check.h"

namespace tandem {
namespace {

// splitmix64's finalizer: a cheap, well-mixed 64-bit step.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

PrefixAffinity::PrefixAffinity(int32_t block_size, size_t capacity_blocks)
    : block_size_(block_size), capacity_(capacity_blocks) {
  TANDEM_CHECK_GE(block_size, 1);
}

std::vector<uint64_t> PrefixAffinity::BlockHashes(std::span<const TokenId> prompt, int32_t block_size) {
  std::vector<uint64_t> hashes;
  const size_t bs = static_cast<size_t>(block_size);
  hashes.reserve(prompt.size() / bs);
  uint64_t chain = Mix(static_cast<uint64_t>(block_size));
  for (size_t start = 0; start + bs <= prompt.size(); start += bs) {
    for (size_t i = start; i < start + bs; ++i) {
      chain = Mix(chain ^ static_cast<uint32_t>(prompt[i]));
    }
    hashes.push_back(chain);
  }
  return hashes;
}

int64_t PrefixAffinity::CachedTokens(std::span<const uint64_t> block_hashes,
                                     int64_t num_prompt_tokens) const {
  if (num_prompt_tokens <= 0) return 0;
  // Whole blocks before the last prompt token (kv/block_manager.h: NumCachedPrefixTokens).
  const size_t usable = std::min(block_hashes.size(),
                                 static_cast<size_t>((num_prompt_tokens - 1) / block_size_));
  size_t hit = 0;
  while (hit < usable && index_.count(block_hashes[hit]) != 0) ++hit;
  return static_cast<int64_t>(hit) * block_size_;
}

void PrefixAffinity::Insert(std::span<const uint64_t> block_hashes) {
  if (capacity_ == 0) return;
  for (uint64_t h : block_hashes) {
    auto it = index_.find(h);
    if (it != index_.end()) {
      lru_.splice(lru_.end(), lru_, it->second);  // most recently used
      continue;
    }
    if (index_.size() == capacity_) {
      index_.erase(lru_.front());
      lru_.pop_front();
    }
    index_.emplace(h, lru_.insert(lru_.end(), h));
  }
}

void PrefixAffinity::Clear() {
  lru_.clear();
  index_.clear();
}

double FallbackPrefillRate(std::span<const PrefillLoad> loads, const PrefillPolicyOptions& options) {
  double sum = 0;
  int n = 0;
  for (const PrefillLoad& load : loads) {
    if (!load.up || !(load.prefill_tokens_per_s > 0)) continue;
    sum += load.prefill_tokens_per_s;
    ++n;
  }
  return n > 0 ? sum / n : options.default_prefill_tokens_per_s;
}

double PredictTtftSeconds(const PrefillLoad& load, double fallback_tokens_per_s) {
  const double rate = load.prefill_tokens_per_s > 0 ? load.prefill_tokens_per_s : fallback_tokens_per_s;
  const int64_t tokens = std::max<int64_t>(load.num_queued_prompt_tokens, 0) +
                         std::max<int64_t>(load.num_uncached_tokens, 0);
  return static_cast<double>(tokens) / rate;
}

std::vector<size_t> RankPrefillWorkers(std::span<const PrefillLoad> loads,
                                       const PrefillPolicyOptions& options) {
  const double fallback = FallbackPrefillRate(loads, options);
  std::vector<size_t> order;
  std::vector<double> ttft(loads.size());
  for (size_t i = 0; i < loads.size(); ++i) {
    if (!loads[i].up) continue;
    ttft[i] = PredictTtftSeconds(loads[i], fallback);
    order.push_back(i);
  }
  auto key = [&](size_t i) {
    return std::make_tuple(ttft[i], loads[i].num_in_flight, loads[i].last_pick, i);
  };
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return key(a) < key(b); });
  return order;
}

int64_t BlocksForTokens(int64_t num_tokens, int32_t block_size) {
  return (std::max<int64_t>(num_tokens, 0) + block_size - 1) / block_size;
}

DecodeDemand DemandOf(int64_t num_prompt_tokens, int64_t max_tokens, int64_t max_model_len,
                      int32_t block_size) {
  DecodeDemand demand;
  int64_t whole = num_prompt_tokens + std::max<int64_t>(max_tokens, 1);
  if (max_model_len > 0) whole = std::min(whole, max_model_len);
  demand.reserved_blocks = BlocksForTokens(num_prompt_tokens + 1, block_size);
  demand.whole_blocks = std::max(BlocksForTokens(whole, block_size), demand.reserved_blocks);
  return demand;
}

std::vector<size_t> RankDecodeWorkers(std::span<const DecodeLoad> loads, const DecodeDemand& demand) {
  std::vector<size_t> order;
  for (size_t i = 0; i < loads.size(); ++i) {
    if (loads[i].up) order.push_back(i);
  }
  auto fit_class = [&](size_t i) {
    const int64_t available = loads[i].num_available_blocks;
    if (available >= demand.whole_blocks) return 0;
    if (available >= demand.reserved_blocks) return 1;
    return 2;
  };
  auto key = [&](size_t i) {
    return std::make_tuple(fit_class(i), loads[i].batch_load, -loads[i].num_available_blocks,
                           loads[i].last_pick, i);
  };
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return key(a) < key(b); });
  return order;
}

}  // namespace tandem
