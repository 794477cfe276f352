// worker_picker: the router's routing policy for a disaggregated deployment, as pure functions over
// a snapshot of worker loads (no gRPC, no clocks, no threads), so that every decision is a
// deterministic function of its inputs and unit-testable (tests/router/worker_picker_test.cpp).
//
// Prefill: each prefill worker gets a predicted time to first token
//
//     ttft_s = (queued_prompt_tokens + this prompt's uncached tokens there) / prefill_tokens_per_s
//
// where queued_prompt_tokens is the worker's reported queue plus what this router sent there since
// its last stats poll, prefill_tokens_per_s is the worker's measured rate (before any measurement:
// the mean of the pool's measured rates, else a configured default), and the uncached tokens come
// from PrefixAffinity: the router's own, bounded estimate of which block-aligned prompt prefixes
// each worker has cached (it remembers what it routed where). The lowest prediction wins; ties go
// to fewest requests in flight, then to the worker picked least recently, then to the lower index.
//
// Decode: a worker "fits" a request when its available KV blocks (free + cached as reported, minus
// this router's reservations since the poll) hold the whole request (prompt + max_tokens, capped by
// the model's context). Order: workers that fit the whole request, then those that fit only what
// the worker reserves now (prompt + 1 token: it may preempt later), then the rest (the router's
// view may be stale; the worker's verdict is authoritative); within a class least batch load
// (running + waiting + transferring + this router's admissions since the poll), then most
// available blocks, then least recently picked, then the lower index. The router tries workers in
// this order and moves on when one refuses with RESOURCE_EXHAUSTED.
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

#include "tandem/types.h"

namespace tandem {

// The router's estimate of one prefill worker's prefix cache: the chained hashes of the full
// prompt blocks it routed there, least recently routed evicted first once `capacity_blocks` are
// held. Not thread-safe (the router guards it).
class PrefixAffinity {
 public:
  PrefixAffinity(int32_t block_size, size_t capacity_blocks);

  // The chain hash of every full block of `prompt` (block i's hash covers tokens [0, (i+1)*bs)),
  // as the engine's prefix cache keys blocks (kv/block_manager.h); the values are the router's own.
  static std::vector<uint64_t> BlockHashes(std::span<const TokenId> prompt, int32_t block_size);

  // Prompt tokens estimated cached on the worker: the leading blocks whose hashes are held, at most
  // the blocks before the last prompt token (the engine always computes that one).
  int64_t CachedTokens(std::span<const uint64_t> block_hashes, int64_t num_prompt_tokens) const;

  // Records that a prompt with these block hashes was routed here (most recently used).
  void Insert(std::span<const uint64_t> block_hashes);
  void Clear();  // the worker lost its cache (restarted)

  size_t size() const { return index_.size(); }
  size_t capacity_blocks() const { return capacity_; }
  int32_t block_size() const { return block_size_; }

 private:
  int32_t block_size_;  // Constant after construction
  size_t capacity_;     // Constant after construction
  std::list<uint64_t> lru_;  // front = evicted first
  std::unordered_map<uint64_t, std::list<uint64_t>::iterator> index_;
};

// One prefill worker, as the router sees it when a request arrives.
struct PrefillLoad {
  bool up = true;
  int64_t num_queued_prompt_tokens = 0;  // reported + this router's since the poll
  double prefill_tokens_per_s = 0;       // measured by the worker; <= 0: not yet
  int64_t num_uncached_tokens = 0;       // this prompt's tokens not estimated cached there
  int32_t num_in_flight = 0;             // this router's requests there
  uint64_t last_pick = 0;                // when this router last picked it (a counter; 0: never)
};

struct PrefillPolicyOptions {
  // Rate assumed for a worker that has measured none while no worker of the pool has.
  double default_prefill_tokens_per_s = 2000;
};

// The rate to assume for workers that measured none: the mean of the measured rates of `loads`
// (up workers only), else the default.
double FallbackPrefillRate(std::span<const PrefillLoad> loads, const PrefillPolicyOptions& options);

// Predicted seconds until this prompt's first token on that worker.
double PredictTtftSeconds(const PrefillLoad& load, double fallback_tokens_per_s);

// Indices of the up workers, best first (see the file comment).
std::vector<size_t> RankPrefillWorkers(std::span<const PrefillLoad> loads,
                                       const PrefillPolicyOptions& options = {});

// One decode worker, as the router sees it when a request arrives.
struct DecodeLoad {
  bool up = true;
  int64_t num_available_blocks = 0;  // free + cached reported, minus this router's since the poll
  int32_t batch_load = 0;            // running + waiting + transferring, + this router's since the poll
  uint64_t last_pick = 0;            // as PrefillLoad::last_pick
};

// What a request needs from a decode worker, in KV blocks.
struct DecodeDemand {
  int64_t whole_blocks = 0;     // prompt + max_tokens, capped by the model's context
  int64_t reserved_blocks = 0;  // what the worker reserves at admission: prompt + 1 token
};

// Blocks for `num_tokens` tokens.
int64_t BlocksForTokens(int64_t num_tokens, int32_t block_size);
DecodeDemand DemandOf(int64_t num_prompt_tokens, int64_t max_tokens, int64_t max_model_len,
                      int32_t block_size);

// Indices of the up workers in the order to try them (see the file comment).
std::vector<size_t> RankDecodeWorkers(std::span<const DecodeLoad> loads, const DecodeDemand& demand);

}  // namespace tandem
