// worker_picker (src/router/worker_picker.h): the router's routing policy as pure functions.
// Prefix affinity (hashes, cached-token estimate, LRU bound), the prefill TTFT prediction and its
// ranking (affinity wins when the prefix is cached, load when it is not, ties), and the decode
// ranking (fit classes, batch load, the order refusals are retried in).
#include <gtest/gtest.h>

#include <numeric>

#include "router/worker_picker.h"

namespace tandem {
namespace {

constexpr int32_t kBlock = 16;

std::vector<TokenId> Tokens(int32_t n, TokenId first = 100) {
  std::vector<TokenId> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), first);
  return v;
}

// --- PrefixAffinity ---------------------------------------------------------------------------------

TEST(PrefixAffinityTest, HashesAreChainedPerFullBlock) {
  const auto a = Tokens(40);
  const auto hashes = PrefixAffinity::BlockHashes(a, kBlock);
  ASSERT_EQ(hashes.size(), 2u);  // 40 tokens: two full blocks, the tail is not hashed
  EXPECT_NE(hashes[0], hashes[1]);
  // Same first block, different second block: the first hash is shared, the second is not.
  auto b = a;
  b[20] = 7;
  const auto hb = PrefixAffinity::BlockHashes(b, kBlock);
  EXPECT_EQ(hb[0], hashes[0]);
  EXPECT_NE(hb[1], hashes[1]);
  // Chained: a block's hash depends on every token before it, not just its own.
  auto c = a;
  c[0] = 7;
  const auto hc = PrefixAffinity::BlockHashes(c, kBlock);
  EXPECT_NE(hc[1], hashes[1]);
  // Deterministic.
  EXPECT_EQ(PrefixAffinity::BlockHashes(a, kBlock), hashes);
  EXPECT_TRUE(PrefixAffinity::BlockHashes(Tokens(15), kBlock).empty());
}

TEST(PrefixAffinityTest, CachedTokensCountsLeadingBlocksAndLeavesTheLastToken) {
  PrefixAffinity affinity(kBlock, 100);
  const auto routed = Tokens(64);
  affinity.Insert(PrefixAffinity::BlockHashes(routed, kBlock));
  EXPECT_EQ(affinity.size(), 4u);

  // The same prompt: 64 tokens, 4 full blocks, but the last token is always computed: 3 blocks.
  EXPECT_EQ(affinity.CachedTokens(PrefixAffinity::BlockHashes(routed, kBlock), 64), 48);
  // A longer prompt sharing the 64-token prefix: all 4 blocks.
  auto longer = Tokens(100);
  EXPECT_EQ(affinity.CachedTokens(PrefixAffinity::BlockHashes(longer, kBlock), 100), 64);
  // Diverging in block 2 (tokens 32..47): only the two leading blocks count; the chain makes every
  // later block differ too.
  longer[40] = 1;
  EXPECT_EQ(affinity.CachedTokens(PrefixAffinity::BlockHashes(longer, kBlock), 100), 32);
  // Nothing shared.
  EXPECT_EQ(affinity.CachedTokens(PrefixAffinity::BlockHashes(Tokens(64, 5000), kBlock), 64), 0);
  EXPECT_EQ(affinity.CachedTokens({}, 0), 0);
  affinity.Clear();
  EXPECT_EQ(affinity.size(), 0u);
  EXPECT_EQ(affinity.CachedTokens(PrefixAffinity::BlockHashes(routed, kBlock), 64), 0);
}

TEST(PrefixAffinityTest, HoldsAtMostItsCapacityAndEvictsTheLeastRecentlyRouted) {
  PrefixAffinity affinity(kBlock, 6);
  const auto a = Tokens(48, 1000), b = Tokens(48, 2000), c = Tokens(48, 3000);
  const auto ha = PrefixAffinity::BlockHashes(a, kBlock), hb = PrefixAffinity::BlockHashes(b, kBlock),
             hc = PrefixAffinity::BlockHashes(c, kBlock);
  affinity.Insert(ha);
  affinity.Insert(hb);
  EXPECT_EQ(affinity.size(), 6u);
  affinity.Insert(ha);  // a is now the most recent
  affinity.Insert(hc);  // evicts b's three blocks
  EXPECT_EQ(affinity.size(), 6u);
  EXPECT_EQ(affinity.CachedTokens(ha, 49), 48);
  EXPECT_EQ(affinity.CachedTokens(hc, 49), 48);
  EXPECT_EQ(affinity.CachedTokens(hb, 49), 0);
  // Many more prompts never grow it past the bound.
  for (int i = 0; i < 50; ++i) affinity.Insert(PrefixAffinity::BlockHashes(Tokens(80, 10000 + 100 * i), kBlock));
  EXPECT_EQ(affinity.size(), 6u);
  PrefixAffinity none(kBlock, 0);
  none.Insert(ha);
  EXPECT_EQ(none.size(), 0u);
}

// --- prefill ----------------------------------------------------------------------------------------

TEST(PrefillPolicyTest, PredictionIsQueuedPlusUncachedOverTheRate) {
  PrefillLoad load;
  load.num_queued_prompt_tokens = 3000;
  load.num_uncached_tokens = 1000;
  load.prefill_tokens_per_s = 2000;
  EXPECT_DOUBLE_EQ(PredictTtftSeconds(load, 1.0), 2.0);
  load.prefill_tokens_per_s = 0;  // not measured: the fallback rate
  EXPECT_DOUBLE_EQ(PredictTtftSeconds(load, 500.0), 8.0);

  // The fallback: the mean of the up workers' measured rates, else the configured default.
  std::vector<PrefillLoad> pool(3);
  PrefillPolicyOptions options;
  options.default_prefill_tokens_per_s = 123;
  EXPECT_DOUBLE_EQ(FallbackPrefillRate(pool, options), 123);
  pool[0].prefill_tokens_per_s = 1000;
  pool[1].prefill_tokens_per_s = 3000;
  EXPECT_DOUBLE_EQ(FallbackPrefillRate(pool, options), 2000);
  pool[1].up = false;
  EXPECT_DOUBLE_EQ(FallbackPrefillRate(pool, options), 1000);
}

TEST(PrefillPolicyTest, AffinityWinsWhenThePrefixIsCached) {
  // Worker 0 holds this prompt's 992-token prefix and has a queue; worker 1 is idle but would
  // compute all 1000 tokens.
  std::vector<PrefillLoad> loads(2);
  for (auto& l : loads) l.prefill_tokens_per_s = 1000;
  loads[0].num_queued_prompt_tokens = 300;
  loads[0].num_in_flight = 2;
  loads[0].num_uncached_tokens = 8;
  loads[1].num_uncached_tokens = 1000;
  EXPECT_EQ(RankPrefillWorkers(loads), (std::vector<size_t>{0, 1}));
  // ... until its queue is longer than computing the whole prompt elsewhere.
  loads[0].num_queued_prompt_tokens = 1200;
  EXPECT_EQ(RankPrefillWorkers(loads), (std::vector<size_t>{1, 0}));
}

TEST(PrefillPolicyTest, LoadWinsWhenNothingIsCached) {
  std::vector<PrefillLoad> loads(3);
  for (auto& l : loads) {
    l.prefill_tokens_per_s = 1000;
    l.num_uncached_tokens = 500;
  }
  loads[0].num_queued_prompt_tokens = 4000;
  loads[1].num_queued_prompt_tokens = 100;
  loads[2].num_queued_prompt_tokens = 2000;
  EXPECT_EQ(RankPrefillWorkers(loads), (std::vector<size_t>{1, 2, 0}));
  // A faster worker beats a shorter queue once it is fast enough: 2500 tokens at 3000/s (0.83 s)
  // still lose to 600 at 1000/s (0.6 s); at 5000/s (0.5 s) they win.
  loads[2].prefill_tokens_per_s = 3000;
  EXPECT_EQ(RankPrefillWorkers(loads), (std::vector<size_t>{1, 2, 0}));
  loads[2].prefill_tokens_per_s = 5000;
  EXPECT_EQ(RankPrefillWorkers(loads), (std::vector<size_t>{2, 1, 0}));
}

TEST(PrefillPolicyTest, TiesGoToFewestInFlightThenLeastRecentlyPickedThenIndex) {
  std::vector<PrefillLoad> loads(3);
  for (auto& l : loads) l.num_uncached_tokens = 64;  // no rate measured: all use the default
  EXPECT_EQ(RankPrefillWorkers(loads), (std::vector<size_t>{0, 1, 2}));
  loads[0].last_pick = 5;
  loads[1].last_pick = 3;
  loads[2].last_pick = 4;
  EXPECT_EQ(RankPrefillWorkers(loads), (std::vector<size_t>{1, 2, 0}));
  loads[1].num_in_flight = 1;
  EXPECT_EQ(RankPrefillWorkers(loads), (std::vector<size_t>{2, 0, 1}));
  // Down workers are left out.
  loads[2].up = false;
  EXPECT_EQ(RankPrefillWorkers(loads), (std::vector<size_t>{0, 1}));
  // Deterministic: the same snapshot, the same answer.
  EXPECT_EQ(RankPrefillWorkers(loads), RankPrefillWorkers(loads));
}

TEST(PrefillPolicyTest, AnUnmeasuredWorkerIsJudgedAtThePoolsMeasuredRate) {
  std::vector<PrefillLoad> loads(2);
  loads[0].prefill_tokens_per_s = 100;  // measured, slow
  loads[0].num_uncached_tokens = 100;
  loads[1].num_uncached_tokens = 100;   // unmeasured: judged at 100 tok/s, not the 2000 default
  loads[1].num_queued_prompt_tokens = 1;
  EXPECT_EQ(RankPrefillWorkers(loads), (std::vector<size_t>{0, 1}));
}

// --- decode -----------------------------------------------------------------------------------------

TEST(DecodePolicyTest, DemandCountsPromptPlusMaxTokensCappedByTheContext) {
  DecodeDemand d = DemandOf(100, 60, 4096, kBlock);
  EXPECT_EQ(d.whole_blocks, 10);    // 160 tokens
  EXPECT_EQ(d.reserved_blocks, 7);  // 101 tokens
  d = DemandOf(100, 100000, 256, kBlock);
  EXPECT_EQ(d.whole_blocks, 16);    // capped at 256 tokens
  d = DemandOf(32, 0, 4096, kBlock);
  EXPECT_EQ(d.reserved_blocks, 3);  // 33 tokens
  EXPECT_EQ(d.whole_blocks, 3);
}

TEST(DecodePolicyTest, WorkersThatFitComeFirstThenLeastBatchLoad) {
  const DecodeDemand demand{10, 7};
  std::vector<DecodeLoad> loads(4);
  loads[0] = {true, 100, 9, 0};  // fits, busy
  loads[1] = {true, 8, 0, 0};    // fits only the reservation, idle
  loads[2] = {true, 50, 2, 0};   // fits, less busy
  loads[3] = {true, 3, 0, 0};    // fits nothing (as far as the router knows)
  EXPECT_EQ(RankDecodeWorkers(loads, demand), (std::vector<size_t>{2, 0, 1, 3}));
  // Equal load: most available blocks first, then least recently picked, then index.
  loads[0].batch_load = 2;
  EXPECT_EQ(RankDecodeWorkers(loads, demand), (std::vector<size_t>{0, 2, 1, 3}));
  loads[2].num_available_blocks = 100;
  loads[0].last_pick = 7;
  loads[2].last_pick = 6;
  EXPECT_EQ(RankDecodeWorkers(loads, demand), (std::vector<size_t>{2, 0, 1, 3}));
  loads[0].last_pick = loads[2].last_pick;
  EXPECT_EQ(RankDecodeWorkers(loads, demand), (std::vector<size_t>{0, 2, 1, 3}));
}

TEST(DecodePolicyTest, RetryOrderCoversEveryUpWorkerOnce) {
  // The router walks this list, moving on at each RESOURCE_EXHAUSTED: every up worker is tried
  // exactly once, down workers never.
  const DecodeDemand demand{4, 2};
  std::vector<DecodeLoad> loads(5);
  for (size_t i = 0; i < loads.size(); ++i) {
    loads[i].num_available_blocks = static_cast<int64_t>(i);  // 0..4 blocks
    loads[i].batch_load = static_cast<int32_t>(5 - i);
  }
  loads[3].up = false;
  EXPECT_EQ(RankDecodeWorkers(loads, demand), (std::vector<size_t>{4, 2, 1, 0}));
  for (auto& l : loads) l.up = false;
  EXPECT_TRUE(RankDecodeWorkers(loads, demand).empty());
}

}  // namespace
}  // namespace tandem
