// Qwen2 (q/k/v biases) and Mistral (sliding window) run through the whole engine with dummy weights:
// the same greedy outputs whether prompts run alone or concurrently with small prefill chunks, the
// sliding window changes the result once the context exceeds it (so it is applied), and the KV pool
// is whole afterwards. Numerics of the individual ops are checked against references in
// tests/backend/cpu; the Llama path against HF goldens in engine_golden_test.
#include <gtest/gtest.h>

#include "backend/cpu/cpu_backend.h"
#include "model/dummy_weights.h"
#include "support/engine_fixture.h"

namespace tandem {
namespace {

ModelConfig TinyConfig(const std::string& arch, const std::string& extra) {
  const std::string json = R"({"architectures": [")" + arch + R"("], "vocab_size": 512,
      "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
      "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "torch_dtype": "bfloat16",
      "hidden_act": "silu", "eos_token_id": 0)" + extra + "}";
  auto config = ParseModelConfig(json, "test config");
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  return *config;
}

std::unique_ptr<Engine> MakeEngine(const ModelConfig& config, int32_t chunk) {
  EngineConfig ec;
  ec.max_num_batched_tokens = chunk;
  ec.num_kv_blocks = 128;
  auto engine = Engine::Create(ec, config, std::make_unique<DummyWeightSource>(config, 7),
                               std::make_unique<CpuBackend>(CpuBackendConfig{2}));
  EXPECT_TRUE(engine.ok()) << engine.status().ToString();
  return std::move(engine).value();
}

std::vector<TokenId> Prompt(int n, int salt) {
  std::vector<TokenId> p(n);
  for (int i = 0; i < n; ++i) p[i] = (i * 53 + salt * 17 + 3) % 512;
  return p;
}

std::map<std::string, std::vector<TokenId>> Generate(const ModelConfig& config, int32_t chunk,
                                                     bool together) {
  std::map<std::string, std::vector<TokenId>> result;
  auto engine = MakeEngine(config, chunk);
  const int lengths[] = {3, 40, 150};
  for (int i = 0; i < 3; ++i) {
    Status s = engine->AddRequest(testing::GreedyRequest("r" + std::to_string(i), Prompt(lengths[i], i), 24));
    EXPECT_TRUE(s.ok()) << s.ToString();
    if (!together) {
      for (auto& [id, r] : testing::RunToCompletion(*engine)) result[id] = r.tokens;
    }
  }
  if (together) {
    for (auto& [id, r] : testing::RunToCompletion(*engine)) result[id] = r.tokens;
  }
  auto stats = engine->Stats().blocks;
  EXPECT_EQ(stats.num_in_use, 0);
  EXPECT_EQ(stats.num_free + stats.num_cached, stats.num_total);
  return result;
}

TEST(EngineArchitecturesTest, Qwen2WithBiasesIsBatchAndChunkInvariant) {
  ModelConfig config = TinyConfig("Qwen2ForCausalLM", "");
  ASSERT_TRUE(config.attention_bias);
  auto alone = Generate(config, 2048, false);
  auto together = Generate(config, 16, true);
  ASSERT_EQ(alone.size(), 3u);
  EXPECT_EQ(alone, together);
}

TEST(EngineArchitecturesTest, MistralSlidingWindowIsAppliedAndInvariant) {
  ModelConfig windowed = TinyConfig("MistralForCausalLM", R"(, "sliding_window": 32)");
  ASSERT_TRUE(windowed.sliding_window.has_value());
  auto alone = Generate(windowed, 2048, false);
  auto together = Generate(windowed, 16, true);
  EXPECT_EQ(alone, together);
  // Without the window the 150-token prompt sees more context: its continuation must differ, while
  // the 3-token prompt (always inside the window) must not.
  ModelConfig full = TinyConfig("MistralForCausalLM", R"(, "sliding_window": null)");
  auto unwindowed = Generate(full, 2048, false);
  EXPECT_EQ(unwindowed["r0"], alone["r0"]);
  EXPECT_NE(unwindowed["r2"], alone["r2"]);
}

}  // namespace
}  // namespace tandem
