// Unit tests of BlockManager: accounting, prefix hits, the last-token cap, LRU eviction, commit
// races and all-or-nothing failures. The randomized and collision tests are in
// block_manager_property_test.cpp.
#include "kv/block_manager.h"

#include <gtest/gtest.h>

#include <limits>
#include <numeric>
#include <vector>

namespace tandem {
namespace {

constexpr int32_t kBs = 4;

BlockManagerConfig Config(int32_t num_blocks, bool caching = true) {
  BlockManagerConfig config;
  config.num_blocks = num_blocks;
  config.block_size = kBs;
  config.enable_prefix_caching = caching;
  return config;
}

// `n` consecutive token ids from `first`.
std::vector<TokenId> Tokens(TokenId first, int n) {
  std::vector<TokenId> tokens(static_cast<size_t>(n));
  std::iota(tokens.begin(), tokens.end(), first);
  return tokens;
}

std::vector<TokenId> Concat(std::vector<TokenId> a, const std::vector<TokenId>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

std::vector<BlockId> Table(const BlockManager& bm, SeqId seq) {
  std::span<const BlockId> table = bm.BlockTable(seq);
  return {table.begin(), table.end()};
}

void ExpectStats(const BlockManager& bm, int32_t free, int32_t cached, int32_t in_use) {
  BlockManagerStats s = bm.Stats();
  EXPECT_EQ(s.num_free, free);
  EXPECT_EQ(s.num_cached, cached);
  EXPECT_EQ(s.num_in_use, in_use);
  EXPECT_EQ(s.num_free + s.num_cached + s.num_in_use, s.num_total);
  bm.CheckInvariants();
}

bool SameStats(const BlockManagerStats& a, const BlockManagerStats& b) {
  return a.num_total == b.num_total && a.num_free == b.num_free && a.num_cached == b.num_cached &&
         a.num_in_use == b.num_in_use && a.prefix_queries_tokens == b.prefix_queries_tokens &&
         a.prefix_hit_tokens == b.prefix_hit_tokens;
}

// Allocates `seq` for `prompt`, computes the whole prompt and commits it. Returns the cached prefix.
int32_t RunPrompt(BlockManager& bm, SeqId seq, const std::vector<TokenId>& prompt) {
  auto cached = bm.AllocateSequence(seq, prompt, static_cast<int64_t>(prompt.size()));
  EXPECT_TRUE(cached.ok()) << cached.status().ToString();
  if (!cached.ok()) return -1;
  bm.CommitComputed(seq, prompt, static_cast<int64_t>(prompt.size()));
  bm.CheckInvariants();
  return *cached;
}

TEST(BlockManagerTest, BlocksForTokens) {
  BlockManager bm(Config(8));
  EXPECT_EQ(bm.BlocksForTokens(0), 0);
  EXPECT_EQ(bm.BlocksForTokens(-3), 0);
  EXPECT_EQ(bm.BlocksForTokens(1), 1);
  EXPECT_EQ(bm.BlocksForTokens(kBs), 1);
  EXPECT_EQ(bm.BlocksForTokens(kBs + 1), 2);
  EXPECT_EQ(bm.BlocksForTokens(int64_t{1} << 40), std::numeric_limits<int32_t>::max());
}

TEST(BlockManagerTest, AllocateAppendFreeAccounting) {
  BlockManager bm(Config(8));
  ExpectStats(bm, 8, 0, 0);
  EXPECT_EQ(bm.NumAvailableBlocks(), 8);
  auto cached = bm.AllocateSequence(1, Tokens(0, 6), 6);
  ASSERT_TRUE(cached.ok());
  EXPECT_EQ(*cached, 0);
  EXPECT_TRUE(bm.HasSequence(1));
  EXPECT_EQ(bm.BlockTable(1).size(), 2u);
  ExpectStats(bm, 6, 0, 2);

  ASSERT_TRUE(bm.AppendSlots(1, 8).ok());  // still two blocks
  EXPECT_EQ(bm.BlockTable(1).size(), 2u);
  ASSERT_TRUE(bm.AppendSlots(1, 9).ok());
  EXPECT_EQ(bm.BlockTable(1).size(), 3u);
  ASSERT_TRUE(bm.AppendSlots(1, 2).ok());  // never shrinks
  EXPECT_EQ(bm.BlockTable(1).size(), 3u);
  ExpectStats(bm, 5, 0, 3);
  EXPECT_EQ(bm.NumAvailableBlocks(), 5);

  // Reserving more than the prompt (room for decoding) is allowed.
  ASSERT_TRUE(bm.AllocateSequence(2, Tokens(100, 3), 12).ok());
  EXPECT_EQ(bm.BlockTable(2).size(), 3u);
  ExpectStats(bm, 2, 0, 6);

  bm.FreeSequence(1);
  EXPECT_FALSE(bm.HasSequence(1));
  EXPECT_TRUE(bm.BlockTable(1).empty());
  ExpectStats(bm, 5, 0, 3);  // nothing committed: nothing cached
  bm.FreeSequence(2);
  ExpectStats(bm, 8, 0, 0);
}

TEST(BlockManagerTest, PromptExactlyFillingABlockIsNeverFullyCached) {
  BlockManager bm(Config(8));
  const std::vector<TokenId> prompt = Tokens(0, kBs);
  EXPECT_EQ(RunPrompt(bm, 1, prompt), 0);
  ExpectStats(bm, 7, 0, 1);
  // The only block holds the last prompt token: a second prompt must recompute it.
  EXPECT_EQ(bm.NumCachedPrefixTokens(prompt), 0);
  EXPECT_EQ(RunPrompt(bm, 2, prompt), 0);
  EXPECT_NE(Table(bm, 1)[0], Table(bm, 2)[0]);
  // Its recomputed block is a duplicate: it stays unhashed and becomes free, not cached.
  bm.FreeSequence(2);
  ExpectStats(bm, 7, 0, 1);
  bm.FreeSequence(1);
  ExpectStats(bm, 7, 1, 0);
}

TEST(BlockManagerTest, PromptOneTokenOverABlockHitsTheFullBlock) {
  BlockManager bm(Config(8));
  const std::vector<TokenId> prompt = Tokens(0, kBs + 1);
  EXPECT_EQ(RunPrompt(bm, 1, prompt), 0);
  EXPECT_EQ(bm.NumCachedPrefixTokens(prompt), kBs);
  EXPECT_EQ(RunPrompt(bm, 2, prompt), kBs);
  const std::vector<BlockId> t1 = Table(bm, 1), t2 = Table(bm, 2);
  ASSERT_EQ(t1.size(), 2u);
  ASSERT_EQ(t2.size(), 2u);
  EXPECT_EQ(t1[0], t2[0]);  // shared, ref_count 2
  EXPECT_NE(t1[1], t2[1]);
  ExpectStats(bm, 5, 0, 3);
  // The shared block stays in use until both sequences release it.
  bm.FreeSequence(1);
  ExpectStats(bm, 6, 0, 2);
  bm.FreeSequence(2);
  ExpectStats(bm, 7, 1, 0);
  BlockManagerStats s = bm.Stats();
  EXPECT_EQ(s.prefix_queries_tokens, 2 * (kBs + 1));
  EXPECT_EQ(s.prefix_hit_tokens, kBs);
}

TEST(BlockManagerTest, IdenticalPromptSharesAllButTheLastBlock) {
  BlockManager bm(Config(16));
  const std::vector<TokenId> prompt = Tokens(0, 3 * kBs + 2);  // 3 full blocks + 2 tokens
  EXPECT_EQ(RunPrompt(bm, 1, prompt), 0);
  EXPECT_EQ(RunPrompt(bm, 2, prompt), 3 * kBs);
  const std::vector<BlockId> t1 = Table(bm, 1), t2 = Table(bm, 2);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(t1[i], t2[i]) << i;
  EXPECT_NE(t1[3], t2[3]);
  ExpectStats(bm, 11, 0, 5);
  // A third sharer takes a third reference: freeing two of them keeps the blocks in use.
  EXPECT_EQ(RunPrompt(bm, 3, prompt), 3 * kBs);
  bm.FreeSequence(1);
  bm.FreeSequence(2);
  ExpectStats(bm, 12, 0, 4);
  bm.FreeSequence(3);
  ExpectStats(bm, 13, 3, 0);
}

TEST(BlockManagerTest, PartialPrefixMatch) {
  BlockManager bm(Config(16));
  const std::vector<TokenId> a = Tokens(0, 3 * kBs + 1);
  const std::vector<TokenId> b = Concat(Tokens(0, 2 * kBs), Tokens(500, kBs + 3));
  EXPECT_EQ(RunPrompt(bm, 1, a), 0);
  bm.FreeSequence(1);
  EXPECT_EQ(bm.NumCachedPrefixTokens(b), 2 * kBs);
  EXPECT_EQ(RunPrompt(bm, 2, b), 2 * kBs);
  bm.CheckInvariants();
}

TEST(BlockManagerTest, DivergenceInTheMiddleStopsTheMatchThere) {
  BlockManager bm(Config(16));
  const std::vector<TokenId> a = Tokens(0, 4 * kBs + 1);
  std::vector<TokenId> b = a;
  b[kBs + 2] = 999;  // block 1 differs; blocks 2 and 3 are equal to a's but follow another prefix
  EXPECT_EQ(RunPrompt(bm, 1, a), 0);
  EXPECT_EQ(bm.NumCachedPrefixTokens(b), kBs);
  EXPECT_EQ(RunPrompt(bm, 2, b), kBs);
  const std::vector<BlockId> t1 = Table(bm, 1), t2 = Table(bm, 2);
  EXPECT_EQ(t1[0], t2[0]);
  for (size_t i = 1; i < t2.size(); ++i) EXPECT_NE(t1[i], t2[i]) << i;
  // b's own blocks 2 and 3 were registered under b's prefix: both prompts now hit fully.
  EXPECT_EQ(bm.NumCachedPrefixTokens(a), 4 * kBs);
  EXPECT_EQ(bm.NumCachedPrefixTokens(b), 4 * kBs);
}

TEST(BlockManagerTest, LastTokenCap) {
  BlockManager bm(Config(16));
  const std::vector<TokenId> long_prompt = Tokens(0, 4 * kBs);
  EXPECT_EQ(RunPrompt(bm, 1, long_prompt), 0);
  // All 4 blocks are registered, but a prompt equal to the first 3 blocks gets only 2.
  const std::vector<TokenId> three(long_prompt.begin(), long_prompt.begin() + 3 * kBs);
  EXPECT_EQ(bm.NumCachedPrefixTokens(three), 2 * kBs);
  EXPECT_EQ(RunPrompt(bm, 2, three), 2 * kBs);
  EXPECT_EQ(bm.NumCachedPrefixTokens(long_prompt), 3 * kBs);
  const std::vector<TokenId> one_over(long_prompt.begin(), long_prompt.begin() + 3 * kBs + 1);
  EXPECT_EQ(bm.NumCachedPrefixTokens(one_over), 3 * kBs);
  EXPECT_EQ(bm.NumCachedPrefixTokens(std::vector<TokenId>{}), 0);
  EXPECT_EQ(bm.NumCachedPrefixTokens(Tokens(0, 1)), 0);
}

TEST(BlockManagerTest, EmptyPromptAllocates) {
  BlockManager bm(Config(4));
  auto cached = bm.AllocateSequence(1, {}, 0);
  ASSERT_TRUE(cached.ok());
  EXPECT_EQ(*cached, 0);
  EXPECT_TRUE(bm.HasSequence(1));
  EXPECT_TRUE(bm.BlockTable(1).empty());
  ASSERT_TRUE(bm.AppendSlots(1, 1).ok());
  ExpectStats(bm, 3, 0, 1);
  bm.FreeSequence(1);
  ExpectStats(bm, 4, 0, 0);
}

TEST(BlockManagerTest, LruEvictsTailBlocksOfTheLeastRecentlyFreedFirst) {
  BlockManager bm(Config(6));
  const std::vector<TokenId> a = Tokens(0, 2 * kBs + 1);    // 2 full blocks + 1
  const std::vector<TokenId> b = Tokens(100, 2 * kBs + 1);  // another 2 + 1
  RunPrompt(bm, 1, a);
  RunPrompt(bm, 2, b);
  bm.FreeSequence(1);  // LRU: a1 a0
  bm.FreeSequence(2);  // LRU: a1 a0 b1 b0
  ExpectStats(bm, 2, 4, 0);
  // Three blocks: two free ones, then evict a1 (a's tail block).
  ASSERT_TRUE(bm.AllocateSequence(3, Tokens(900, 1), 3 * kBs).ok());
  ExpectStats(bm, 0, 3, 3);
  EXPECT_EQ(bm.NumCachedPrefixTokens(a), kBs);  // a0 still there
  EXPECT_EQ(bm.NumCachedPrefixTokens(b), 2 * kBs);
  // One more: a0 goes.
  ASSERT_TRUE(bm.AppendSlots(3, 4 * kBs).ok());
  EXPECT_EQ(bm.NumCachedPrefixTokens(a), 0);
  EXPECT_EQ(bm.NumCachedPrefixTokens(b), 2 * kBs);
  // Reusing b moves it to the LRU tail again once freed; then b1, b0 go last.
  bm.FreeSequence(3);  // LRU: b1 b0; free: 4
  ExpectStats(bm, 4, 2, 0);
  ASSERT_TRUE(bm.AllocateSequence(4, Tokens(900, 1), 5 * kBs).ok());
  EXPECT_EQ(bm.NumCachedPrefixTokens(b), kBs);
}

TEST(BlockManagerTest, HitsRefreshRecency) {
  BlockManager bm(Config(6));
  const std::vector<TokenId> a = Tokens(0, kBs + 1);
  const std::vector<TokenId> b = Tokens(100, kBs + 1);
  RunPrompt(bm, 1, a);
  RunPrompt(bm, 2, b);
  bm.FreeSequence(1);
  bm.FreeSequence(2);  // LRU: a0 b0
  EXPECT_EQ(RunPrompt(bm, 3, a), kBs);
  bm.FreeSequence(3);  // LRU: b0 a0
  ASSERT_TRUE(bm.AllocateSequence(4, Tokens(900, 1), 5 * kBs).ok());  // 4 free + evicts b0
  EXPECT_EQ(bm.NumCachedPrefixTokens(a), kBs);
  EXPECT_EQ(bm.NumCachedPrefixTokens(b), 0);
}

TEST(BlockManagerTest, EvictedBlockBreaksLaterHitsFromThatPoint) {
  BlockManager bm(Config(8));
  // s1 registers x0; s2 computes x0 concurrently (a duplicate) and registers x1, x2 after it.
  const std::vector<TokenId> s1 = Tokens(0, kBs + 1);
  const std::vector<TokenId> s2 = Concat(Tokens(0, kBs), Tokens(50, 2 * kBs + 1));
  ASSERT_TRUE(bm.AllocateSequence(1, s1, static_cast<int64_t>(s1.size())).ok());
  ASSERT_TRUE(bm.AllocateSequence(2, s2, static_cast<int64_t>(s2.size())).ok());
  bm.CommitComputed(1, s1, static_cast<int64_t>(s1.size()));
  bm.CommitComputed(2, s2, static_cast<int64_t>(s2.size()));
  bm.CheckInvariants();
  EXPECT_EQ(bm.NumCachedPrefixTokens(s2), 3 * kBs);
  bm.FreeSequence(1);  // LRU: x0
  bm.FreeSequence(2);  // LRU: x0 x2 x1 (s2's copy of x0 is unhashed: free)
  ExpectStats(bm, 5, 3, 0);
  // Take 6 blocks: the 5 free ones and x0, the LRU front.
  ASSERT_TRUE(bm.AllocateSequence(3, Tokens(900, 1), 6 * kBs).ok());
  ExpectStats(bm, 0, 2, 6);
  // x1 and x2 are still cached, but the chain is broken at x0: nothing hits.
  EXPECT_EQ(bm.NumCachedPrefixTokens(s2), 0);
  bm.FreeSequence(3);
  // Recomputing x0 does not revive x1 and x2, which followed the evicted registration.
  EXPECT_EQ(RunPrompt(bm, 4, s1), 0);
  EXPECT_EQ(bm.NumCachedPrefixTokens(s2), kBs);
  bm.CheckInvariants();
}

TEST(BlockManagerTest, CommitRaceKeepsTheFirstRegistration) {
  BlockManager bm(Config(16));
  const std::vector<TokenId> prompt = Tokens(0, 2 * kBs + 1);
  const int64_t n = static_cast<int64_t>(prompt.size());
  ASSERT_EQ(*bm.AllocateSequence(1, prompt, n), 0);
  ASSERT_EQ(*bm.AllocateSequence(2, prompt, n), 0);  // nothing committed yet: no hit
  bm.CommitComputed(1, prompt, n);
  bm.CommitComputed(2, prompt, n);  // duplicates: s2's blocks stay unhashed
  bm.CheckInvariants();
  const std::vector<BlockId> t1 = Table(bm, 1);
  EXPECT_EQ(RunPrompt(bm, 3, prompt), 2 * kBs);
  EXPECT_EQ(Table(bm, 3)[0], t1[0]);
  EXPECT_EQ(Table(bm, 3)[1], t1[1]);
  bm.FreeSequence(3);

  // s2 keeps decoding: its next full block registers after s1's chain.
  std::vector<TokenId> tokens = Concat(prompt, Tokens(700, 2 * kBs));
  ASSERT_TRUE(bm.AppendSlots(2, static_cast<int64_t>(tokens.size())).ok());
  bm.CommitComputed(2, tokens, static_cast<int64_t>(tokens.size()) - 1);
  bm.CheckInvariants();
  const std::vector<BlockId> t2 = Table(bm, 2);
  tokens.push_back(1234);
  EXPECT_EQ(RunPrompt(bm, 4, tokens), 4 * kBs);
  const std::vector<BlockId> t4 = Table(bm, 4);
  EXPECT_EQ(t4[0], t1[0]);
  EXPECT_EQ(t4[1], t1[1]);
  EXPECT_EQ(t4[2], t2[2]);
  EXPECT_EQ(t4[3], t2[3]);
  bm.FreeSequence(4);

  // Freeing s2 frees its duplicates and caches its registered blocks.
  const BlockManagerStats before = bm.Stats();
  bm.FreeSequence(2);
  const BlockManagerStats after = bm.Stats();
  EXPECT_EQ(after.num_free - before.num_free, 3);  // 2 duplicates + the partial tail block
  EXPECT_EQ(after.num_cached - before.num_cached, 2);
  bm.CheckInvariants();
}

TEST(BlockManagerTest, CommitIsIncrementalAndIgnoresPartialBlocks) {
  BlockManager bm(Config(8));
  const std::vector<TokenId> prompt = Tokens(0, 3 * kBs + 1);
  const int64_t n = static_cast<int64_t>(prompt.size());
  ASSERT_TRUE(bm.AllocateSequence(1, prompt, n).ok());
  bm.CommitComputed(1, prompt, kBs - 1);  // chunked prefill: nothing full yet
  EXPECT_EQ(bm.NumCachedPrefixTokens(prompt), 0);
  bm.CommitComputed(1, prompt, kBs + 2);
  EXPECT_EQ(bm.NumCachedPrefixTokens(prompt), kBs);
  bm.CommitComputed(1, prompt, kBs + 2);  // repeated: no change
  bm.CommitComputed(1, prompt, n);
  EXPECT_EQ(bm.NumCachedPrefixTokens(prompt), 3 * kBs);
  bm.CheckInvariants();
}

TEST(BlockManagerTest, AllOrNothingCountsReusedCachedBlocksAsUnavailable) {
  BlockManager bm(Config(4));
  const std::vector<TokenId> prompt = Tokens(0, 2 * kBs + 1);
  RunPrompt(bm, 1, prompt);
  bm.FreeSequence(1);
  ExpectStats(bm, 2, 2, 0);
  EXPECT_EQ(bm.NumAvailableBlocks(), 4);
  const BlockManagerStats before = bm.Stats();

  // 5 blocks: 2 hits + 3 fresh. Four look available, but two of them are the hits themselves.
  auto too_big = bm.AllocateSequence(2, prompt, 5 * kBs);
  ASSERT_FALSE(too_big.ok());
  EXPECT_EQ(too_big.status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(SameStats(before, bm.Stats()));
  EXPECT_FALSE(bm.HasSequence(2));
  EXPECT_EQ(bm.NumCachedPrefixTokens(prompt), 2 * kBs);  // hits not evicted
  bm.CheckInvariants();

  // 4 blocks fit exactly, without evicting the hits.
  auto fits = bm.AllocateSequence(2, prompt, 4 * kBs);
  ASSERT_TRUE(fits.ok());
  EXPECT_EQ(*fits, 2 * kBs);
  ExpectStats(bm, 0, 0, 4);
}

TEST(BlockManagerTest, FailuresLeaveStateUntouched) {
  BlockManager bm(Config(4));
  const std::vector<TokenId> prompt = Tokens(0, kBs + 1);
  RunPrompt(bm, 1, prompt);
  RunPrompt(bm, 2, Tokens(50, kBs + 1));
  bm.FreeSequence(2);
  const BlockManagerStats stats = bm.Stats();
  const std::vector<BlockId> table = Table(bm, 1);

  EXPECT_EQ(bm.AllocateSequence(3, Tokens(100, 1), 4 * kBs).status().code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(bm.AppendSlots(1, 5 * kBs).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(bm.AllocateSequence(1, prompt, 1).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(bm.AllocateSequence(4, prompt, -1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(bm.AppendSlots(77, 1).code(), StatusCode::kFailedPrecondition);
  bm.FreeSequence(77);  // unknown: a no-op

  EXPECT_TRUE(SameStats(stats, bm.Stats()));
  EXPECT_EQ(Table(bm, 1), table);
  EXPECT_FALSE(bm.HasSequence(3));
  EXPECT_FALSE(bm.HasSequence(4));
  EXPECT_EQ(bm.NumCachedPrefixTokens(Tokens(50, kBs + 1)), kBs);
  bm.CheckInvariants();
}

TEST(BlockManagerTest, DisabledCachingNeverLooksUpOrCommits) {
  BlockManager bm(Config(8, /*caching=*/false));
  const std::vector<TokenId> prompt = Tokens(0, 2 * kBs + 1);
  EXPECT_EQ(RunPrompt(bm, 1, prompt), 0);
  EXPECT_EQ(RunPrompt(bm, 2, prompt), 0);
  EXPECT_EQ(bm.NumCachedPrefixTokens(prompt), 0);
  bm.FreeSequence(1);
  bm.FreeSequence(2);
  ExpectStats(bm, 8, 0, 0);
  EXPECT_EQ(bm.Stats().prefix_queries_tokens, 0);
  EXPECT_EQ(bm.Stats().prefix_hit_tokens, 0);
}

TEST(BlockManagerTest, ResetPrefixCacheFreesOnlyCachedBlocks) {
  BlockManager bm(Config(8));
  const std::vector<TokenId> a = Tokens(0, 2 * kBs + 1);
  const std::vector<TokenId> b = Tokens(100, 2 * kBs + 1);
  RunPrompt(bm, 1, a);
  RunPrompt(bm, 2, b);
  bm.FreeSequence(1);
  ExpectStats(bm, 3, 2, 3);
  bm.ResetPrefixCache();
  ExpectStats(bm, 5, 0, 3);
  EXPECT_EQ(bm.NumCachedPrefixTokens(a), 0);
  // b is in use: its blocks keep serving hits.
  EXPECT_EQ(bm.NumCachedPrefixTokens(b), 2 * kBs);
  bm.FreeSequence(2);
  ExpectStats(bm, 6, 2, 0);
}

TEST(BlockManagerTest, StatsCountQueriesAndHits) {
  BlockManager bm(Config(16));
  const std::vector<TokenId> prompt = Tokens(0, 2 * kBs + 3);
  RunPrompt(bm, 1, prompt);
  RunPrompt(bm, 2, prompt);
  RunPrompt(bm, 3, Tokens(500, 5));
  const BlockManagerStats s = bm.Stats();
  EXPECT_EQ(s.prefix_queries_tokens, 2 * (2 * kBs + 3) + 5);
  EXPECT_EQ(s.prefix_hit_tokens, 2 * kBs);
  // NumCachedPrefixTokens is a query without side effects.
  EXPECT_EQ(bm.NumCachedPrefixTokens(prompt), 2 * kBs);
  EXPECT_TRUE(SameStats(s, bm.Stats()));
}

}  // namespace
}  // namespace tandem
