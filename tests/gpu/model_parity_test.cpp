// The unchanged model and engine on the CUDA backend against the HF goldens (float32 reference on
// bf16 weights), teacher-forced: last-prompt logits (relative error <= 2e-2, argmax equal where the
// golden top-1/top-2 margin > 0.1), decode steps through the paged cache fed the golden greedy
// tokens, chunked prefill, and the engine's greedy output wherever the golden margins allow.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "backend/cuda/cuda_backend_factory.h"
#include "gpu_test_support.h"
#include "kv/kv_cache.h"
#include "model/llama_model.h"
#include "model/safetensors_checkpoint.h"
#include "support/engine_fixture.h"
#include "support/golden.h"
#include "worker/engine.h"

namespace tandem {
namespace {

using testing::Goldens;

constexpr double kLogitRelTolerance = 2e-2;
constexpr float kArgmaxMargin = 0.1f;

struct Harness {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<SafetensorsCheckpoint> weights;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<KvCache> cache;
  int32_t block_size = 16;
  int32_t num_blocks = 0;
};

// small_batch_attention: CudaBackendOptions::programmatic_decode_attention,
// decode_attention_combines_in_kernel on, small_m_gemv_streamed_max_rows 4 (batches of <= 4 sequences).
Harness MakeHarness(const std::string& name, int32_t block_size, int32_t num_blocks, bool small_batch_attention) {
  Harness h;
  h.block_size = block_size;
  h.num_blocks = num_blocks;
  auto dir = gpu_testing::GpuModelDir(name);
  auto config = LoadModelConfig(dir);
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  if (!config.ok()) return h;
  auto weights = SafetensorsCheckpoint::Open(dir);
  EXPECT_TRUE(weights.ok()) << weights.status().ToString();
  if (!weights.ok()) return h;
  h.weights = std::move(weights).value();
  h.backend = gpu_testing::MakeGpuBackend(gpu_testing::GpuBackendOptions(0.9, small_batch_attention));
  if (!h.backend) return h;
  auto model = LlamaModel::Load(*config, *h.weights, *h.backend, 4096);
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  if (!model.ok()) return h;
  h.model = std::move(model).value();
  KvCacheShape shape{static_cast<int32_t>(config->num_layers), num_blocks, block_size,
                     static_cast<int32_t>(config->num_kv_heads), static_cast<int32_t>(config->head_dim),
                     h.backend->kv_cache_dtype()};
  auto cache = KvCache::Create(*h.backend, shape);
  EXPECT_TRUE(cache.ok()) << cache.status().ToString();
  if (cache.ok()) h.cache = std::move(cache).value();
  return h;
}

// A scattered, non-monotonic block table so paging bugs show.
std::vector<int32_t> ScatteredTable(int32_t num_tokens, int32_t block_size, int32_t num_blocks) {
  const int32_t n = (num_tokens + block_size - 1) / block_size;
  std::vector<int32_t> table(n);
  for (int32_t i = 0; i < n; ++i) table[i] = static_cast<int32_t>((num_blocks - 1 + 7LL * i) % num_blocks);
  return table;
}

// Runs tokens[begin, end) of one sequence; returns the logits of `rows` (relative to begin).
std::vector<float> RunChunk(Harness& h, const std::vector<int32_t>& tokens, int32_t begin, int32_t end,
                            const std::vector<int32_t>& table, const std::vector<int32_t>& rows) {
  std::vector<int32_t> ids(tokens.begin() + begin, tokens.begin() + end);
  std::vector<int32_t> positions(end - begin);
  std::iota(positions.begin(), positions.end(), begin);
  std::vector<int64_t> slots;
  for (int32_t p = begin; p < end; ++p) {
    slots.push_back(static_cast<int64_t>(table[p / h.block_size]) * h.block_size + p % h.block_size);
  }
  std::vector<int32_t> query_start{0, end - begin};
  std::vector<int32_t> context_lens{end};
  ModelInput input;
  input.token_ids = ids;
  input.logits_rows = rows;
  AttentionMetadata& m = input.attention;
  m.num_seqs = 1;
  m.num_tokens = end - begin;
  m.query_start = query_start;
  m.context_lens = context_lens;
  m.block_tables = table;
  m.max_blocks_per_seq = static_cast<int32_t>(table.size());
  m.positions = positions;
  m.slot_mapping = slots;
  m.block_size = h.block_size;
  m.max_query_len = end - begin;
  m.max_context_len = end;
  std::vector<float> logits;
  Status s = h.model->Forward(input, *h.cache, &logits);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return logits;
}

int64_t Argmax(const float* row, int64_t n) { return std::max_element(row, row + n) - row; }

float TopTwoMargin(const std::vector<float>& logits) {
  std::vector<float> v = logits;
  std::partial_sort(v.begin(), v.begin() + 2, v.end(), std::greater<float>());
  return v[0] - v[1];
}

// (model, small-batch decode attention switches on).
class CudaModelGoldenTest : public ::testing::TestWithParam<std::tuple<std::string, bool>> {
 protected:
  const std::string& Model() const { return std::get<0>(GetParam()); }
  bool SmallBatchAttention() const { return std::get<1>(GetParam()); }
};

TEST_P(CudaModelGoldenTest, LastLogitsOfEveryPrompt) {
  Goldens goldens = Goldens::FromFile(gpu_testing::GpuModelDir(Model()) / "goldens.safetensors");
  ASSERT_TRUE(goldens.ok());
  ASSERT_EQ(goldens.NumPrompts(), 6);
  Harness h = MakeHarness(Model(), 16, 96, SmallBatchAttention());
  ASSERT_NE(h.cache, nullptr);
  for (int p = 0; p < goldens.NumPrompts(); ++p) {
    const std::string name = "p" + std::to_string(p);
    auto ids64 = goldens.Int64(name + ".input_ids").values;
    std::vector<int32_t> tokens(ids64.begin(), ids64.end());
    const int32_t n = static_cast<int32_t>(tokens.size());
    auto logits = RunChunk(h, tokens, 0, n, ScatteredTable(n, h.block_size, h.num_blocks), {n - 1});
    auto golden = goldens.Float(name + ".last_logits").values;
    ASSERT_EQ(logits.size(), golden.size());
    const double err = gpu_testing::RelError(logits, golden);
    const float margin = TopTwoMargin(golden);
    std::printf("[ %s %s ] last-logits rel err %.3e, golden margin %.4f\n", Model().c_str(), name.c_str(),
                err, margin);
    EXPECT_LE(err, kLogitRelTolerance) << name;
    if (margin > kArgmaxMargin) {
      EXPECT_EQ(Argmax(logits.data(), logits.size()), Argmax(golden.data(), golden.size())) << name;
    }
  }
}

// Prefill the prompt, then decode step by step through the paged cache, fed the golden greedy
// tokens; each step's logits against the golden top-8 before that greedy step.
TEST_P(CudaModelGoldenTest, TeacherForcedDecodeFollowsGreedyGoldens) {
  Goldens goldens = Goldens::FromFile(gpu_testing::GpuModelDir(Model()) / "goldens.safetensors");
  ASSERT_TRUE(goldens.ok());
  int compared = 0, skipped = 0;
  double worst = 0.0;
  for (int p = 0; p < goldens.NumPrompts(); ++p) {
    Harness h = MakeHarness(Model(), 16, 96, SmallBatchAttention());
    ASSERT_NE(h.cache, nullptr);
    const std::string name = "p" + std::to_string(p);
    auto prompt = goldens.Int64(name + ".input_ids").values;
    auto greedy = goldens.Int64(name + ".greedy_ids").values;
    auto top_values = goldens.Float(name + ".greedy_top8_values");
    auto top_ids = goldens.Int64(name + ".greedy_top8_ids");
    std::vector<int32_t> tokens(prompt.begin(), prompt.end());
    for (int64_t g : greedy) tokens.push_back(static_cast<int32_t>(g));
    const int32_t n = static_cast<int32_t>(prompt.size());
    const auto table = ScatteredTable(static_cast<int32_t>(tokens.size()), h.block_size, h.num_blocks);
    for (int32_t step = 0; step < static_cast<int32_t>(greedy.size()); ++step) {
      // Step 0: the whole prompt; step i: the golden token i - 1 at position n + i - 1.
      const int32_t begin = step == 0 ? 0 : n + step - 1;
      const int32_t end = n + step;
      auto logits = RunChunk(h, tokens, begin, end, table, {end - begin - 1});
      ASSERT_FALSE(logits.empty());
      std::vector<float> got, want;
      for (int k = 0; k < 8; ++k) {
        got.push_back(logits[top_ids.values[step * 8 + k]]);
        want.push_back(top_values.values[step * 8 + k]);
      }
      const double err = gpu_testing::RelError(got, want);
      worst = std::max(worst, err);
      EXPECT_LE(err, kLogitRelTolerance) << name << " step " << step;
      const float margin = want[0] - want[1];
      if (margin > kArgmaxMargin) {
        EXPECT_EQ(Argmax(logits.data(), logits.size()), greedy[step]) << name << " step " << step;
        ++compared;
      } else {
        ++skipped;
      }
    }
  }
  std::printf("[ %s ] teacher-forced decode: worst top-8 rel err %.3e, argmax compared at %d steps "
              "(%d skipped, margin <= %.1f)\n", Model().c_str(), worst, compared, skipped, kArgmaxMargin);
}

TEST_P(CudaModelGoldenTest, ChunkedPrefillThroughThePagedCacheMatches) {
  Goldens goldens = Goldens::FromFile(gpu_testing::GpuModelDir(Model()) / "goldens.safetensors");
  Harness h = MakeHarness(Model(), 16, 96, SmallBatchAttention());
  ASSERT_NE(h.cache, nullptr);
  for (int p : {3, 4, 5}) {
    const std::string name = "p" + std::to_string(p);
    auto ids64 = goldens.Int64(name + ".input_ids").values;
    std::vector<int32_t> tokens(ids64.begin(), ids64.end());
    const int32_t n = static_cast<int32_t>(tokens.size());
    auto table = ScatteredTable(n, h.block_size, h.num_blocks);
    std::vector<float> logits;
    for (int32_t begin = 0; begin < n; begin += 37) {  // chunks straddle block boundaries
      const int32_t end = std::min(n, begin + 37);
      logits = RunChunk(h, tokens, begin, end, table, {end - begin - 1});
    }
    const double err = gpu_testing::RelError(logits, goldens.Float(name + ".last_logits").values);
    std::printf("[ %s %s ] chunked prefill rel err %.3e\n", Model().c_str(), name.c_str(), err);
    EXPECT_LE(err, kLogitRelTolerance) << name;
  }
}

// ---- the engine -------------------------------------------------------------------------------------

std::unique_ptr<Engine> MakeCudaEngine(const std::string& name, EngineConfig config, double utilization,
                                       bool small_batch_attention) {
  const auto dir = gpu_testing::GpuModelDir(name);
  auto model_config = LoadModelConfig(dir);
  auto weights = SafetensorsCheckpoint::Open(dir);
  if (!model_config.ok() || !weights.ok()) {
    ADD_FAILURE() << "cannot open " << dir;
    return nullptr;
  }
  auto backend = gpu_testing::MakeGpuBackend(gpu_testing::GpuBackendOptions(utilization, small_batch_attention));
  if (!backend) return nullptr;
  auto engine = Engine::Create(config, *model_config, std::move(weights).value(), std::move(backend));
  if (!engine.ok()) {
    ADD_FAILURE() << engine.status().ToString();
    return nullptr;
  }
  return std::move(engine).value();
}

// Compares greedy tokens with the goldens up to (and including) the first step whose golden
// top-1/top-2 margin is <= 0.1: past it, bf16 may legitimately pick the other token.
int CompareWhereMarginsAllow(const Goldens& g, int p, const std::vector<TokenId>& got, const std::string& what) {
  auto greedy = g.Int64("p" + std::to_string(p) + ".greedy_ids").values;
  auto top = g.Float("p" + std::to_string(p) + ".greedy_top8_values").values;
  int compared = 0;
  for (size_t i = 0; i < greedy.size() && i < got.size(); ++i) {
    const float margin = top[i * 8] - top[i * 8 + 1];
    if (margin <= kArgmaxMargin) break;
    EXPECT_EQ(got[i], greedy[i]) << what << " p" << p << " token " << i;
    if (got[i] != greedy[i]) break;
    ++compared;
  }
  EXPECT_EQ(got.size(), greedy.size()) << what << " p" << p;
  return compared;
}

TEST_P(CudaModelGoldenTest, EngineConcurrentChunkedPrefillThenPrefixCacheHits) {
  Goldens goldens = Goldens::FromFile(gpu_testing::GpuModelDir(Model()) / "goldens.safetensors");
  EngineConfig config;
  config.block_size = 16;
  config.max_num_batched_tokens = 64;
  config.num_kv_blocks = 256;
  auto engine = MakeCudaEngine(Model(), config, 0.9, SmallBatchAttention());
  ASSERT_NE(engine, nullptr);
  int compared = 0;
  for (int pass = 0; pass < 2; ++pass) {
    for (int p = 0; p < goldens.NumPrompts(); ++p) {
      auto prompt = testing::ToTokens(goldens.Int64("p" + std::to_string(p) + ".input_ids").values);
      ASSERT_TRUE(engine->AddRequest(testing::GreedyRequest("p" + std::to_string(p), prompt, 16)).ok());
    }
    auto done = testing::RunToCompletion(*engine);
    ASSERT_EQ(done.size(), 6u);
    for (int p = 0; p < goldens.NumPrompts(); ++p) {
      compared += CompareWhereMarginsAllow(goldens, p, done["p" + std::to_string(p)].tokens,
                                           "pass " + std::to_string(pass));
    }
  }
  EXPECT_GT(engine->Stats().blocks.prefix_hit_tokens, 0);
  std::printf("[ %s ] engine (concurrent, chunked, prefix cache): %d greedy tokens equal the goldens\n",
              Model().c_str(), compared);
}

// Default engine config: the KV cache is sized from the backend's budget (free memory).
TEST_P(CudaModelGoldenTest, EngineSizesItsCacheFromTheGpuBudget) {
  Goldens goldens = Goldens::FromFile(gpu_testing::GpuModelDir(Model()) / "goldens.safetensors");
  auto engine = MakeCudaEngine(Model(), EngineConfig{}, 0.06, SmallBatchAttention());
  ASSERT_NE(engine, nullptr);
  const auto stats = engine->Stats();
  EXPECT_GT(stats.blocks.num_total, 1000);
  std::printf("[ %s ] budget-sized KV cache: %d blocks\n", Model().c_str(),
              static_cast<int>(stats.blocks.num_total));
  int compared = 0;
  for (int p = 0; p < goldens.NumPrompts(); ++p) {
    auto prompt = testing::ToTokens(goldens.Int64("p" + std::to_string(p) + ".input_ids").values);
    ASSERT_TRUE(engine->AddRequest(testing::GreedyRequest("p" + std::to_string(p), prompt, 16)).ok());
    auto done = testing::RunToCompletion(*engine);
    compared += CompareWhereMarginsAllow(goldens, p, done["p" + std::to_string(p)].tokens, "alone");
  }
  std::printf("[ %s ] engine (one prompt at a time): %d greedy tokens equal the goldens\n",
              Model().c_str(), compared);
}

INSTANTIATE_TEST_SUITE_P(Models, CudaModelGoldenTest,
                         ::testing::Combine(::testing::Values("tiny-llama", "tiny-llama31"), ::testing::Bool()),
                         gpu_testing::ModelAndSmallBatchAttentionName);

}  // namespace
}  // namespace tandem
