// LlamaModel on the CPU backend against HF transformers goldens (float32 reference on bf16
// weights): last-position logits of every prompt, the top-16 at every position of p2 (causal
// masking), and the same logits when the prompt is fed in chunks through the paged cache.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend/cpu/cpu_backend.h"
#include "kv/kv_cache.h"
#include "model/llama_model.h"
#include "model/safetensors_checkpoint.h"
#include "support/golden.h"
#include "support/testdata.h"

namespace tandem {
namespace {

using testing::Goldens;

constexpr float kLogitTolerance = 1e-4f;

struct Harness {
  std::unique_ptr<CpuBackend> backend;
  std::unique_ptr<SafetensorsCheckpoint> weights;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<KvCache> cache;
  int32_t block_size = 16;
};

Harness MakeHarness(const std::string& name, int32_t block_size, int32_t num_blocks) {
  Harness h;
  h.block_size = block_size;
  auto dir = testing::ModelDir(name);
  auto config = LoadModelConfig(dir);
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  auto weights = SafetensorsCheckpoint::Open(dir);
  EXPECT_TRUE(weights.ok()) << weights.status().ToString();
  h.weights = std::move(weights).value();
  h.backend = std::make_unique<CpuBackend>(CpuBackendConfig{2});
  auto model = LlamaModel::Load(*config, *h.weights, *h.backend, 4096);
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  h.model = std::move(model).value();
  KvCacheShape shape{static_cast<int32_t>(config->num_layers), num_blocks, block_size,
                     static_cast<int32_t>(config->num_kv_heads),
                     static_cast<int32_t>(config->head_dim), DType::kF32};
  auto cache = KvCache::Create(*h.backend, shape);
  EXPECT_TRUE(cache.ok());
  h.cache = std::move(cache).value();
  return h;
}

// Runs tokens [begin, end) of one sequence whose block table is `table`; returns logits of the
// rows listed (relative to begin).
std::vector<float> RunChunk(Harness& h, const std::vector<int32_t>& tokens, int32_t begin,
                            int32_t end, const std::vector<int32_t>& table,
                            const std::vector<int32_t>& rows) {
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
  input.attention.num_seqs = 1;
  input.attention.num_tokens = end - begin;
  input.attention.query_start = query_start;
  input.attention.context_lens = context_lens;
  input.attention.block_tables = table;
  input.attention.max_blocks_per_seq = static_cast<int32_t>(table.size());
  input.attention.positions = positions;
  input.attention.slot_mapping = slots;
  input.attention.block_size = h.block_size;
  input.attention.max_query_len = end - begin;
  input.attention.max_context_len = end;
  std::vector<float> logits;
  Status s = h.model->Forward(input, *h.cache, &logits);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return logits;
}

// A scattered, non-monotonic block table so paging bugs show.
std::vector<int32_t> ScatteredTable(int32_t num_tokens, int32_t block_size, int32_t num_blocks) {
  const int32_t n = (num_tokens + block_size - 1) / block_size;
  std::vector<int32_t> table(n);
  // 7 is coprime with every num_blocks used here (not a multiple of 7): a permutation.
  for (int32_t i = 0; i < n; ++i) table[i] = static_cast<int32_t>((num_blocks - 1 + 7LL * i) % num_blocks);
  std::vector<int32_t> sorted = table;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_TRUE(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end()) << "table repeats a block";
  return table;
}

float MaxAbsDiff(const float* a, const std::vector<float>& b) {
  float m = 0.0f;
  for (size_t i = 0; i < b.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

class ForwardGoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ForwardGoldenTest, LastLogitsOfEveryPrompt) {
  Goldens goldens(GetParam());
  ASSERT_TRUE(goldens.ok());
  ASSERT_EQ(goldens.NumPrompts(), 6);
  Harness h = MakeHarness(GetParam(), 16, 96);
  for (int p = 0; p < goldens.NumPrompts(); ++p) {
    const std::string name = "p" + std::to_string(p);
    auto ids64 = goldens.Int64(name + ".input_ids").values;
    std::vector<int32_t> tokens(ids64.begin(), ids64.end());
    const int32_t n = static_cast<int32_t>(tokens.size());
    auto table = ScatteredTable(n, h.block_size, 96);
    auto logits = RunChunk(h, tokens, 0, n, table, {n - 1});
    auto golden = goldens.Float(name + ".last_logits").values;
    ASSERT_EQ(logits.size(), golden.size());
    EXPECT_LE(MaxAbsDiff(logits.data(), golden), kLogitTolerance) << name;
  }
}

TEST_P(ForwardGoldenTest, TopSixteenAtEveryPositionOfP2) {
  Goldens goldens(GetParam());
  Harness h = MakeHarness(GetParam(), 16, 8);
  auto ids64 = goldens.Int64("p2.input_ids").values;
  std::vector<int32_t> tokens(ids64.begin(), ids64.end());
  const int32_t n = static_cast<int32_t>(tokens.size());
  std::vector<int32_t> rows(n);
  std::iota(rows.begin(), rows.end(), 0);
  auto logits = RunChunk(h, tokens, 0, n, ScatteredTable(n, 16, 8), rows);
  auto top_values = goldens.Float("p2.all_top16_values");
  auto top_ids = goldens.Int64("p2.all_top16_ids");
  ASSERT_EQ(top_values.shape, (std::vector<int64_t>{n, 16}));
  const int64_t vocab = static_cast<int64_t>(logits.size()) / n;
  for (int32_t pos = 0; pos < n; ++pos) {
    const float* row = logits.data() + pos * vocab;
    for (int k = 0; k < 16; ++k) {
      const int64_t id = top_ids.values[pos * 16 + k];
      EXPECT_NEAR(row[id], top_values.values[pos * 16 + k], kLogitTolerance)
          << "position " << pos << " rank " << k;
    }
    const int64_t argmax = std::max_element(row, row + vocab) - row;
    EXPECT_EQ(argmax, top_ids.values[pos * 16]) << "position " << pos;
  }
}

TEST_P(ForwardGoldenTest, ChunkedPrefillThroughThePagedCacheMatches) {
  Goldens goldens(GetParam());
  Harness h = MakeHarness(GetParam(), 16, 96);
  for (int p : {3, 4, 5}) {
    const std::string name = "p" + std::to_string(p);
    auto ids64 = goldens.Int64(name + ".input_ids").values;
    std::vector<int32_t> tokens(ids64.begin(), ids64.end());
    const int32_t n = static_cast<int32_t>(tokens.size());
    auto table = ScatteredTable(n, h.block_size, 96);
    std::vector<float> logits;
    // Odd chunk size so chunks straddle block boundaries.
    for (int32_t begin = 0; begin < n; begin += 37) {
      const int32_t end = std::min(n, begin + 37);
      logits = RunChunk(h, tokens, begin, end, table, {end - begin - 1});
    }
    EXPECT_LE(MaxAbsDiff(logits.data(), goldens.Float(name + ".last_logits").values), kLogitTolerance)
        << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, ForwardGoldenTest, ::testing::Values("tiny-llama", "tiny-llama31"));

}  // namespace
}  // namespace tandem
