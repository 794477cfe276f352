// Randomized property tests of BlockManager against a model of what each block's KV holds, and
// forced hash collisions. Unit tests of single behaviours are in block_manager_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <ostream>
#include <random>
#include <vector>

#include "kv/block_manager.h"

namespace tandem {

// Test-only access to BlockManager's private state (a friend of the class).
class BlockManagerTestPeer {
 public:
  using ChainHashFn = BlockManager::ChainHashFn;
  // Must be called before anything is committed.
  static void SetChainHash(BlockManager& bm, ChainHashFn fn) { bm.chain_hash_ = fn; }
  static bool IsHashed(const BlockManager& bm, BlockId id) {
    return bm.blocks_[static_cast<size_t>(id)].hashed;
  }
  static const std::vector<TokenId>& StoredTokens(const BlockManager& bm, BlockId id) {
    return bm.blocks_[static_cast<size_t>(id)].tokens;
  }
  static int32_t RefCount(const BlockManager& bm, BlockId id) {
    return bm.blocks_[static_cast<size_t>(id)].ref_count;
  }
};

namespace {

using Peer = BlockManagerTestPeer;

// Hash functions that collide on purpose.
uint64_t ConstantHash(uint64_t, std::span<const TokenId>) { return 42; }
uint64_t FirstTokenHash(uint64_t, std::span<const TokenId> tokens) {
  return static_cast<uint64_t>(tokens[0]);
}
uint64_t ParentOnlyHash(uint64_t parent, std::span<const TokenId>) { return parent; }

std::vector<TokenId> Slice(const std::vector<TokenId>& v, size_t n) {
  return std::vector<TokenId>(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n));
}

// --- Forced collisions -------------------------------------------------------------------------

class CollisionTest : public ::testing::TestWithParam<Peer::ChainHashFn> {};

TEST_P(CollisionTest, CollidingBlocksAreNeverServed) {
  constexpr int32_t bs = 2;
  BlockManager bm(BlockManagerConfig{.num_blocks = 32, .block_size = bs});
  Peer::SetChainHash(bm, GetParam());
  auto run = [&](SeqId seq, const std::vector<TokenId>& prompt) {
    auto cached = bm.AllocateSequence(seq, prompt, static_cast<int64_t>(prompt.size()));
    EXPECT_TRUE(cached.ok());
    bm.CommitComputed(seq, prompt, static_cast<int64_t>(prompt.size()));
    bm.CheckInvariants();
    return cached.ok() ? *cached : -1;
  };
  // a = p q r, b = p' q r: same later blocks after a different first block.
  const std::vector<TokenId> a = {1, 2, 3, 4, 5, 6, 0};
  const std::vector<TokenId> b = {7, 2, 3, 4, 5, 6, 0};
  EXPECT_EQ(run(1, a), 0);
  EXPECT_EQ(bm.NumCachedPrefixTokens(b), 0);
  // b' = p' alone: registers p' (whose key collides with p and everything else).
  EXPECT_EQ(run(2, {7, 2, 9}), 0);
  // b's q must not be a's q, even though its tokens and (colliding) parent key are equal.
  EXPECT_EQ(bm.NumCachedPrefixTokens(b), bs);
  EXPECT_EQ(run(3, b), bs);
  EXPECT_EQ(bm.BlockTable(3)[0], bm.BlockTable(2)[0]);
  for (size_t i = 1; i < 3; ++i) EXPECT_NE(bm.BlockTable(3)[i], bm.BlockTable(1)[i]);
  // Both chains are now cached and each serves only itself.
  EXPECT_EQ(bm.NumCachedPrefixTokens(a), 3 * bs);
  EXPECT_EQ(bm.NumCachedPrefixTokens(b), 3 * bs);
  EXPECT_EQ(run(4, a), 3 * bs);
  EXPECT_EQ(run(5, b), 3 * bs);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(bm.BlockTable(4)[i], bm.BlockTable(1)[i]);
    EXPECT_EQ(bm.BlockTable(5)[i], bm.BlockTable(3)[i]);
  }
  // A different block with a colliding key: a partial match only.
  EXPECT_EQ(bm.NumCachedPrefixTokens(std::vector<TokenId>{1, 2, 3, 5, 5, 6, 0}), bs);
}

INSTANTIATE_TEST_SUITE_P(Hashes, CollisionTest,
                         ::testing::Values(&ConstantHash, &FirstTokenHash, &ParentOnlyHash));

// --- Randomized operations against a model -----------------------------------------------------

struct PropertyParams {
  const char* name;
  Peer::ChainHashFn hash;  // nullptr: the real one
  bool caching;
  uint32_t seed;
};

void PrintTo(const PropertyParams& params, std::ostream* os) { *os << params.name; }

struct ModelSeq {
  std::vector<TokenId> tokens;  // prompt + generated
  int64_t num_computed = 0;
};

class BlockManagerPropertyTest : public ::testing::TestWithParam<PropertyParams> {};

TEST_P(BlockManagerPropertyTest, RandomOperationsKeepInvariantsAndServeOnlyMatchingKv) {
  const PropertyParams& params = GetParam();
  constexpr int32_t bs = 4;
  constexpr int32_t kNumBlocks = 40;
  constexpr int kNumOps = 4000;
  BlockManager bm(BlockManagerConfig{
      .num_blocks = kNumBlocks, .block_size = bs, .enable_prefix_caching = params.caching});
  if (params.hash != nullptr) Peer::SetChainHash(bm, params.hash);
  std::mt19937 rng(params.seed);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };

  // A few shared prefixes over a tiny vocabulary, so equal blocks recur at different positions.
  std::vector<std::vector<TokenId>> prefixes;
  for (int i = 0; i < 5; ++i) {
    std::vector<TokenId> p(static_cast<size_t>(uniform(0, 6 * bs)));
    for (TokenId& t : p) t = uniform(0, 2);
    prefixes.push_back(std::move(p));
  }
  prefixes.push_back({});

  // Model: the token prefix whose KV each block holds (what a kernel would have written there).
  std::vector<std::vector<TokenId>> content(kNumBlocks);
  std::map<SeqId, ModelSeq> live;
  SeqId next_seq = 1;
  int64_t total_hits = 0;
  // How often the interesting paths ran, so the workload cannot silently stop exercising them.
  int num_alloc_failures = 0, num_evicting_allocs = 0, num_hit_allocs = 0;

  auto tables_snapshot = [&] {
    std::map<SeqId, std::vector<BlockId>> tables;
    for (const auto& [seq, m] : live) {
      std::span<const BlockId> t = bm.BlockTable(seq);
      tables[seq].assign(t.begin(), t.end());
    }
    return tables;
  };
  auto same_stats = [](const BlockManagerStats& a, const BlockManagerStats& b) {
    return a.num_free == b.num_free && a.num_cached == b.num_cached &&
           a.num_in_use == b.num_in_use && a.prefix_queries_tokens == b.prefix_queries_tokens &&
           a.prefix_hit_tokens == b.prefix_hit_tokens;
  };
  auto random_seq = [&] {
    auto it = live.begin();
    std::advance(it, uniform(0, static_cast<int>(live.size()) - 1));
    return it;
  };

  // Computes tokens [num_computed, upto) of `seq`: writes the model's KV, then commits.
  auto compute = [&](SeqId seq, ModelSeq& m, int64_t upto) {
    std::span<const BlockId> table = bm.BlockTable(seq);
    ASSERT_LE(upto, static_cast<int64_t>(table.size()) * bs);
    for (int64_t pos = m.num_computed; pos < upto; ++pos) {
      const BlockId id = table[static_cast<size_t>(pos / bs)];
      // Nobody writes into a block that another sequence can read.
      ASSERT_EQ(Peer::RefCount(bm, id), 1) << "writing into shared block " << id;
      ASSERT_FALSE(Peer::IsHashed(bm, id)) << "writing into registered block " << id;
      content[static_cast<size_t>(id)] = Slice(m.tokens, static_cast<size_t>(pos + 1));
    }
    m.num_computed = upto;
    bm.CommitComputed(seq, m.tokens, m.num_computed);
  };

  for (int op = 0; op < kNumOps; ++op) {
    const int kind = uniform(0, 99);
    if (kind < 25 || live.empty()) {
      // Allocate a new sequence for a prompt drawn from a shared prefix.
      std::vector<TokenId> prompt = prefixes[static_cast<size_t>(uniform(0, 5))];
      const int suffix = uniform(prompt.empty() ? 1 : 0, 3 * bs);
      for (int i = 0; i < suffix; ++i) prompt.push_back(uniform(0, 2));
      const int64_t num_tokens = static_cast<int64_t>(prompt.size()) + uniform(0, 2 * bs);
      const SeqId seq = next_seq++;
      const int32_t expected = bm.NumCachedPrefixTokens(prompt);
      const BlockManagerStats before = bm.Stats();
      const auto tables_before = tables_snapshot();
      auto cached = bm.AllocateSequence(seq, prompt, num_tokens);
      if (!cached.ok()) {
        ASSERT_EQ(cached.status().code(), StatusCode::kResourceExhausted);
        ASSERT_TRUE(same_stats(before, bm.Stats()));
        ASSERT_EQ(tables_before, tables_snapshot());
        ASSERT_FALSE(bm.HasSequence(seq));
        ++num_alloc_failures;
        // Failing is only allowed when even counting every hit as free it would not fit.
        ASSERT_GT(bm.BlocksForTokens(num_tokens) - expected / bs,
                  before.num_free + before.num_cached - expected / bs);
      } else {
        const int32_t hit = *cached;
        ASSERT_EQ(hit, expected);
        ASSERT_EQ(hit % bs, 0);
        ASSERT_LT(hit, std::max<int64_t>(static_cast<int64_t>(prompt.size()), 1));
        if (!params.caching) {
          ASSERT_EQ(hit, 0);
        }
        std::span<const BlockId> table = bm.BlockTable(seq);
        ASSERT_EQ(static_cast<int64_t>(table.size()), bm.BlocksForTokens(num_tokens));
        // Every block served from the cache holds exactly this prompt's KV.
        for (int32_t j = 0; j < hit / bs; ++j) {
          const BlockId id = table[static_cast<size_t>(j)];
          ASSERT_EQ(content[static_cast<size_t>(id)],
                    Slice(prompt, static_cast<size_t>((j + 1) * bs)))
              << "op " << op << ": block " << j << " of seq " << seq;
        }
        total_hits += hit;
        num_hit_allocs += hit > 0 ? 1 : 0;
        // More fresh blocks than were free: some came from evicting cached ones.
        const bool evicted = before.num_free < bm.BlocksForTokens(num_tokens) - hit / bs;
        num_evicting_allocs += evicted ? 1 : 0;
        live[seq] = ModelSeq{prompt, hit};
      }
    } else if (kind < 70) {
      // Compute a chunk (prefill) or one decode step, generating a token when the list is done.
      auto it = random_seq();
      ModelSeq& m = it->second;
      const int64_t len = static_cast<int64_t>(m.tokens.size());
      if (m.num_computed >= len) {
        m.tokens.push_back(uniform(0, 2));
        const BlockManagerStats before = bm.Stats();
        const auto tables_before = tables_snapshot();
        Status s = bm.AppendSlots(it->first, static_cast<int64_t>(m.tokens.size()));
        if (!s.ok()) {
          ASSERT_EQ(s.code(), StatusCode::kResourceExhausted);
          ASSERT_TRUE(same_stats(before, bm.Stats()));
          ASSERT_EQ(tables_before, tables_snapshot());
          m.tokens.pop_back();
          bm.CheckInvariants();
          continue;
        }
      }
      const int64_t covered = static_cast<int64_t>(bm.BlockTable(it->first).size()) * bs;
      const int64_t upto = std::min<int64_t>(
          {static_cast<int64_t>(m.tokens.size()), covered, m.num_computed + uniform(1, 3 * bs)});
      compute(it->first, m, upto);
      if (HasFatalFailure()) return;
    } else if (kind < 78) {
      // Reserve room ahead.
      auto it = random_seq();
      const int64_t want = static_cast<int64_t>(it->second.tokens.size()) + uniform(0, 3 * bs);
      const BlockManagerStats before = bm.Stats();
      const auto tables_before = tables_snapshot();
      Status s = bm.AppendSlots(it->first, want);
      if (s.ok()) {
        ASSERT_GE(static_cast<int64_t>(bm.BlockTable(it->first).size()), bm.BlocksForTokens(want));
      } else {
        ASSERT_EQ(s.code(), StatusCode::kResourceExhausted);
        ASSERT_TRUE(same_stats(before, bm.Stats()));
        ASSERT_EQ(tables_before, tables_snapshot());
      }
    } else if (kind < 98) {
      // Free a sequence (sometimes an unknown one).
      if (uniform(0, 9) == 0) {
        const BlockManagerStats before = bm.Stats();
        bm.FreeSequence(next_seq + 1000);
        ASSERT_TRUE(same_stats(before, bm.Stats()));
      } else {
        auto it = random_seq();
        bm.FreeSequence(it->first);
        ASSERT_FALSE(bm.HasSequence(it->first));
        live.erase(it);
      }
    } else {
      bm.ResetPrefixCache();
      ASSERT_EQ(bm.Stats().num_cached, 0);
    }

    // After every operation.
    bm.CheckInvariants();
    const BlockManagerStats stats = bm.Stats();
    ASSERT_EQ(stats.num_free + stats.num_cached + stats.num_in_use, stats.num_total);
    ASSERT_EQ(stats.prefix_hit_tokens, total_hits);
    // Every registered block stores the tokens its KV was computed for, at a block boundary.
    for (BlockId id = 0; id < kNumBlocks; ++id) {
      if (!Peer::IsHashed(bm, id)) continue;
      ASSERT_TRUE(params.caching);
      const std::vector<TokenId>& kv = content[static_cast<size_t>(id)];
      ASSERT_TRUE(!kv.empty() && kv.size() % bs == 0) << "block " << id;
      ASSERT_TRUE(std::equal(kv.end() - bs, kv.end(), Peer::StoredTokens(bm, id).begin(),
                             Peer::StoredTokens(bm, id).end()))
          << "op " << op << ": block " << id;
    }
    // A live sequence whose leading blocks are all registered finds them again (they are in use,
    // so nothing can have evicted them).
    if (!live.empty()) {
      auto it = random_seq();
      std::span<const BlockId> table = bm.BlockTable(it->first);
      size_t k = 0;
      while (k < table.size() && Peer::IsHashed(bm, table[k])) ++k;
      const std::vector<TokenId> probe = Slice(it->second.tokens, std::min<size_t>(
          it->second.tokens.size(), static_cast<size_t>(it->second.num_computed) + 1));
      const size_t cap = probe.empty() ? 0 : (probe.size() - 1) / bs;
      ASSERT_GE(bm.NumCachedPrefixTokens(probe), static_cast<int32_t>(std::min(k, cap)) * bs)
          << "op " << op << ": seq " << it->first;
    }
  }
  // The workload must actually exercise the cache.
  EXPECT_GT(num_alloc_failures, 0);
  if (params.caching) {
    EXPECT_GT(num_evicting_allocs, 0);
    EXPECT_GT(num_hit_allocs, 0);
  }
  RecordProperty("alloc_failures", num_alloc_failures);
  RecordProperty("evicting_allocs", num_evicting_allocs);
  RecordProperty("hit_allocs", num_hit_allocs);
  for (const auto& [seq, m] : live) bm.FreeSequence(seq);
  bm.CheckInvariants();
  EXPECT_EQ(bm.Stats().num_in_use, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Workloads, BlockManagerPropertyTest,
    ::testing::Values(PropertyParams{"real_hash_seed1", nullptr, true, 1},
                      PropertyParams{"real_hash_seed2", nullptr, true, 2},
                      PropertyParams{"real_hash_seed3", nullptr, true, 3},
                      PropertyParams{"constant_hash", &ConstantHash, true, 4},
                      PropertyParams{"first_token_hash", &FirstTokenHash, true, 5},
                      PropertyParams{"parent_only_hash", &ParentOnlyHash, true, 6},
                      PropertyParams{"caching_off", nullptr, false, 7}),
    [](const ::testing::TestParamInfo<PropertyParams>& info) { return info.param.name; });

}  // namespace
}  // namespace tandem
