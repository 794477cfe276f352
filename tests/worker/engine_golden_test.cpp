// The engine (scheduler + paged KV + prefix cache + sampling) on the CPU backend reproduces the HF
// greedy continuations exactly: one prompt at a time, all six prompts concurrently with chunked
// prefill, and again on a second pass that hits the prefix cache.
#include <gtest/gtest.h>

#include "support/engine_fixture.h"
#include "support/golden.h"

namespace tandem {
namespace {

using testing::Goldens;

class EngineGoldenTest : public ::testing::TestWithParam<std::string> {};

std::vector<TokenId> GoldenPrompt(const Goldens& g, int p) {
  return testing::ToTokens(g.Int64("p" + std::to_string(p) + ".input_ids").values);
}
std::vector<TokenId> GoldenGreedy(const Goldens& g, int p) {
  return testing::ToTokens(g.Int64("p" + std::to_string(p) + ".greedy_ids").values);
}

TEST_P(EngineGoldenTest, EachPromptAloneMatchesGreedyGoldens) {
  Goldens goldens(GetParam());
  ASSERT_EQ(goldens.NumPrompts(), 6);
  auto engine = testing::MakeCpuEngine(GetParam());
  ASSERT_NE(engine, nullptr);
  for (int p = 0; p < goldens.NumPrompts(); ++p) {
    auto expected = GoldenGreedy(goldens, p);
    ASSERT_TRUE(engine->AddRequest(testing::GreedyRequest(
        "p" + std::to_string(p), GoldenPrompt(goldens, p), static_cast<int32_t>(expected.size()))).ok());
    auto done = testing::RunToCompletion(*engine);
    const auto& r = done["p" + std::to_string(p)];
    EXPECT_EQ(r.tokens, expected) << "prompt p" << p;
    EXPECT_EQ(r.finish_reason, FinishReason::kLength);
  }
  auto stats = engine->Stats();
  EXPECT_EQ(stats.blocks.num_in_use, 0);
  EXPECT_EQ(stats.blocks.num_free + stats.blocks.num_cached, stats.blocks.num_total);
}

TEST_P(EngineGoldenTest, ConcurrentChunkedPrefillThenPrefixCacheHits) {
  Goldens goldens(GetParam());
  EngineConfig config;
  config.block_size = 16;
  config.max_num_batched_tokens = 64;  // chunk 64: long prompts span many steps, mixed with decodes
  config.num_kv_blocks = 256;
  auto engine = testing::MakeCpuEngine(GetParam(), config);
  ASSERT_NE(engine, nullptr);
  for (int pass = 0; pass < 2; ++pass) {
    for (int p = 0; p < goldens.NumPrompts(); ++p) {
      ASSERT_TRUE(engine->AddRequest(testing::GreedyRequest(
          "p" + std::to_string(p), GoldenPrompt(goldens, p), 16)).ok());
    }
    auto done = testing::RunToCompletion(*engine);
    ASSERT_EQ(done.size(), 6u);
    for (int p = 0; p < goldens.NumPrompts(); ++p) {
      const auto& r = done["p" + std::to_string(p)];
      EXPECT_EQ(r.tokens, GoldenGreedy(goldens, p)) << "pass " << pass << " prompt p" << p;
      const int32_t prompt_len = static_cast<int32_t>(GoldenPrompt(goldens, p).size());
      if (pass == 1) {
        // Every whole block before the last prompt token is served from the cache.
        EXPECT_EQ(r.last.num_cached_tokens, (prompt_len - 1) / 16 * 16) << "prompt p" << p;
      } else {
        EXPECT_EQ(r.last.num_cached_tokens, 0);
      }
    }
    auto stats = engine->Stats();
    EXPECT_EQ(stats.blocks.num_in_use, 0);
    EXPECT_EQ(stats.blocks.num_free + stats.blocks.num_cached, stats.blocks.num_total);
  }
  EXPECT_GT(engine->Stats().blocks.prefix_hit_tokens, 0);
}

INSTANTIATE_TEST_SUITE_P(Models, EngineGoldenTest, ::testing::Values("tiny-llama", "tiny-llama31"));

}  // namespace
}  // namespace tandem
