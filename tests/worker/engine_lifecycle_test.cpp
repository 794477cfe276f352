// Engine lifecycle: KV accounting stays whole through completion, aborts at every stage,
// preemption under KV pressure, bad input rejected with clear errors while the engine keeps
// serving, and seeded sampling reproducible whatever shares the batch.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "backend/cpu/cpu_backend.h"
#include "model/safetensors_checkpoint.h"
#include "support/engine_fixture.h"
#include "support/testdata.h"
#include "support/golden.h"

namespace tandem {
namespace {

using testing::GreedyRequest;
using testing::MakeCpuEngine;
using testing::ExpectPoolWhole;
using testing::RunToCompletion;

std::vector<TokenId> Prompt(int n, int salt = 0) { return testing::SyntheticPrompt(n, salt); }

constexpr char kModel[] = "tiny-llama31";

TEST(EngineLifecycleTest, PromptExactlyFillingABlockAndOneOver) {
  EngineConfig config;
  config.block_size = 16;
  config.num_kv_blocks = 8;
  auto engine = MakeCpuEngine(kModel, config);
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(engine->AddRequest(GreedyRequest("exact", Prompt(16), 1)).ok());
  ASSERT_TRUE(engine->AddRequest(GreedyRequest("over", Prompt(17, 1), 16)).ok());
  auto done = RunToCompletion(*engine);
  EXPECT_EQ(done["exact"].tokens.size(), 1u);
  EXPECT_EQ(done["over"].tokens.size(), 16u);
  ExpectPoolWhole(*engine);
}

TEST(EngineLifecycleTest, AbortWhileWaitingMidPrefillAndMidDecode) {
  EngineConfig config;
  config.max_num_batched_tokens = 32;
  config.num_kv_blocks = 64;
  auto engine = MakeCpuEngine(kModel, config);
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(engine->AddRequest(GreedyRequest("decode", Prompt(8), 64)).ok());
  ASSERT_TRUE(engine->AddRequest(GreedyRequest("prefill", Prompt(300, 2), 8)).ok());
  ASSERT_TRUE(engine->AddRequest(GreedyRequest("waiting", Prompt(40, 3), 8)).ok());
  // Step until "decode" has produced tokens and "prefill" is partway through its prompt.
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(engine->Step().ok());
  EXPECT_GT(engine->Stats().blocks.num_in_use, 0);
  EXPECT_TRUE(engine->Abort("prefill"));
  EXPECT_TRUE(engine->Abort("decode"));
  EXPECT_TRUE(engine->Abort("waiting"));
  EXPECT_FALSE(engine->Abort("waiting"));  // already gone
  EXPECT_FALSE(engine->Abort("never-existed"));
  auto outputs = engine->Step();
  ASSERT_TRUE(outputs.ok());
  int aborted = 0;
  for (const auto& out : *outputs) {
    EXPECT_TRUE(out.finished);
    EXPECT_EQ(out.finish_reason, FinishReason::kAbort);
    ++aborted;
  }
  EXPECT_EQ(aborted, 3);
  EXPECT_FALSE(engine->HasUnfinished());
  ExpectPoolWhole(*engine);
}

TEST(EngineLifecycleTest, PreemptionUnderKvPressureKeepsGreedyOutputs) {
  testing::Goldens goldens(kModel);
  // Reference: each prompt alone with plenty of KV.
  auto roomy = MakeCpuEngine(kModel);
  ASSERT_NE(roomy, nullptr);
  std::vector<std::vector<TokenId>> prompts;
  for (int p = 1; p <= 4; ++p) prompts.push_back(testing::ToTokens(goldens.Int64("p" + std::to_string(p) + ".input_ids").values));
  std::map<std::string, std::vector<TokenId>> expected;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(roomy->AddRequest(GreedyRequest("r" + std::to_string(i), prompts[i], 40)).ok());
  }
  for (auto& [id, r] : RunToCompletion(*roomy)) expected[id] = r.tokens;

  // Tight: 24 blocks of 16 tokens cannot hold all four sequences at full length at once.
  EngineConfig tight;
  tight.num_kv_blocks = 24;
  tight.max_num_batched_tokens = 128;
  auto engine = MakeCpuEngine(kModel, tight);
  ASSERT_NE(engine, nullptr);
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(engine->AddRequest(GreedyRequest("r" + std::to_string(i), prompts[i], 40)).ok());
  }
  auto done = RunToCompletion(*engine);
  for (auto& [id, tokens] : expected) EXPECT_EQ(done[id].tokens, tokens) << id;
  EXPECT_GT(engine->Stats().num_preemptions, 0) << "the test no longer exercises preemption";
  ExpectPoolWhole(*engine);
}

TEST(EngineLifecycleTest, BadInputIsRejectedAndTheEngineKeepsServing) {
  EngineConfig config;
  config.max_model_len = 512;
  config.num_kv_blocks = 16;  // 256 tokens: less than one full-length sequence
  auto engine = MakeCpuEngine(kModel, config);
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(engine->AddRequest(GreedyRequest("good", Prompt(10), 8)).ok());

  auto expect_invalid = [&](Request r, const std::string& needle) {
    Status s = engine->AddRequest(std::move(r));
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    EXPECT_NE(s.message().find(needle), std::string::npos) << s.message();
  };
  expect_invalid(GreedyRequest("ids", {1, 2, 2048}, 4), "outside the vocabulary");
  expect_invalid(GreedyRequest("neg", {1, -1}, 4), "outside the vocabulary");
  expect_invalid(GreedyRequest("empty", {}, 4), "prompt must not be empty");
  expect_invalid(GreedyRequest("long", Prompt(512), 4), "context");
  expect_invalid(GreedyRequest("zero", Prompt(4), 0), "max_tokens");
  expect_invalid(GreedyRequest("kv", Prompt(4), 400), "KV blocks");
  Request nan = GreedyRequest("nan", Prompt(4), 4);
  nan.sampling.temperature = std::numeric_limits<float>::quiet_NaN();
  expect_invalid(nan, "temperature");
  Request negative = GreedyRequest("negtemp", Prompt(4), 4);
  negative.sampling.temperature = -1.0f;
  expect_invalid(negative, "temperature");
  EXPECT_EQ(engine->AddRequest(GreedyRequest("good", Prompt(3), 2)).code(), StatusCode::kAlreadyExists);

  auto done = RunToCompletion(*engine);
  EXPECT_EQ(done.size(), 1u);
  EXPECT_EQ(done["good"].tokens.size(), 8u);
  ExpectPoolWhole(*engine);
}

TEST(EngineLifecycleTest, UnchunkedPrefillNeedsABudgetOfAWholeSequence) {
  // Without chunking, a sequence longer than the step budget could never be admitted (or readmitted
  // after preemption): the configuration is refused up front.
  EngineConfig config;
  config.enable_chunked_prefill = false;
  config.max_num_batched_tokens = 256;
  config.max_model_len = 512;
  auto dir = testing::ModelDir(kModel);
  auto model_config = LoadModelConfig(dir);
  ASSERT_TRUE(model_config.ok());
  auto weights = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(weights.ok());
  auto engine = Engine::Create(config, *model_config, std::move(weights).value(),
                               std::make_unique<CpuBackend>(CpuBackendConfig{1}));
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(engine.status().message().find("max_num_batched_tokens"), std::string::npos);

  config.max_num_batched_tokens = 512;  // now every sequence fits one step
  auto ok_engine = MakeCpuEngine(kModel, config);
  ASSERT_NE(ok_engine, nullptr);
  ASSERT_TRUE(ok_engine->AddRequest(GreedyRequest("whole", Prompt(300), 8)).ok());
  EXPECT_EQ(RunToCompletion(*ok_engine)["whole"].tokens.size(), 8u);
}

TEST(EngineLifecycleTest, StopTokenEndsGenerationAndIsEmitted) {
  auto engine = MakeCpuEngine(kModel);
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(engine->AddRequest(GreedyRequest("free", Prompt(12), 12)).ok());
  auto free_run = RunToCompletion(*engine)["free"].tokens;
  ASSERT_EQ(free_run.size(), 12u);
  Request r = GreedyRequest("stopped", Prompt(12), 12);
  r.sampling.stop_token_ids = {free_run[4]};
  ASSERT_TRUE(engine->AddRequest(r).ok());
  auto stopped = RunToCompletion(*engine)["stopped"];
  // Stops at the first occurrence of that token.
  size_t first = std::find(free_run.begin(), free_run.end(), free_run[4]) - free_run.begin();
  EXPECT_EQ(stopped.tokens, std::vector<TokenId>(free_run.begin(), free_run.begin() + first + 1));
  EXPECT_EQ(stopped.finish_reason, FinishReason::kStop);
}

// Same request + same seed => same tokens, whatever else shares the batch.
TEST(EngineLifecycleTest, SeededSamplingIsReproducibleUnderDifferentBatchMixes) {
  Request probe;
  probe.request_id = "probe";
  probe.prompt_token_ids = Prompt(20, 7);
  probe.sampling.temperature = 0.9f;
  probe.sampling.top_p = 0.95f;
  probe.sampling.top_k = 50;
  probe.sampling.seed = 1234;
  probe.sampling.max_tokens = 24;
  probe.sampling.ignore_eos = true;
  probe.sampling.logprobs = 2;

  auto alone = MakeCpuEngine(kModel);
  ASSERT_TRUE(alone->AddRequest(probe).ok());
  auto a = RunToCompletion(*alone)["probe"];

  EngineConfig chunky;
  chunky.max_num_batched_tokens = 7;  // different chunking and different neighbours every step
  auto crowded = MakeCpuEngine(kModel, chunky);
  for (int i = 0; i < 5; ++i) {
    Request other = probe;
    other.request_id = "other" + std::to_string(i);
    other.prompt_token_ids = Prompt(5 + 9 * i, i);
    other.sampling.seed.reset();
    ASSERT_TRUE(crowded->AddRequest(other).ok());
  }
  ASSERT_TRUE(crowded->AddRequest(probe).ok());
  auto b = RunToCompletion(*crowded)["probe"];
  EXPECT_EQ(a.tokens, b.tokens);
  ASSERT_EQ(a.outputs.size(), b.outputs.size());
  for (size_t i = 0; i < a.outputs.size(); ++i) {
    EXPECT_FLOAT_EQ(a.outputs[i].logprob, b.outputs[i].logprob);
    EXPECT_EQ(a.outputs[i].top_logprobs.size(), 2u);
  }

  Request other_seed = probe;
  other_seed.sampling.seed = 99;
  ASSERT_TRUE(alone->AddRequest(other_seed).ok());
  EXPECT_NE(RunToCompletion(*alone)["probe"].tokens, a.tokens);
}

}  // namespace
}  // namespace tandem
