#include "model/dummy_weights.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "common/half.h"
#include "model/safetensors_checkpoint.h"
#include "model/tensor_specs.h"
#include "support/testdata.h"

namespace tandem {
namespace {

using testing::ModelDir;
using testing::SourceDir;

ModelConfig LoadShipped(const std::string& file) {
  const auto path = SourceDir() / "configs" / "models" / file;
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  auto c = ParseModelConfig(ss.str(), path.string());
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? *c : ModelConfig{};
}

ModelConfig TinyConfig(const std::string& model) {
  auto c = LoadModelConfig(ModelDir(model));
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? *c : ModelConfig{};
}

std::vector<float> ToFloats(const HostTensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    uint16_t h;
    std::memcpy(&h, t.data + i * 2, 2);
    out[i] = t.dtype == DType::kF16 ? F16ToF32(h) : Bf16ToF32(h);
  }
  return out;
}

void MeanStd(const std::vector<float>& v, double* mean, double* std) {
  double s = 0, s2 = 0;
  for (float x : v) {
    s += x;
    s2 += static_cast<double>(x) * x;
  }
  *mean = s / static_cast<double>(v.size());
  *std = std::sqrt(s2 / static_cast<double>(v.size()) - *mean * *mean);
}

// The specs name exactly the tensors of the real tiny checkpoints, with their shapes and dtypes.
TEST(TensorSpecsTest, MatchTinyCheckpoints) {
  for (const char* model : {"tiny-llama", "tiny-llama31"}) {
    SCOPED_TRACE(model);
    ModelConfig config = TinyConfig(model);
    auto ckpt = SafetensorsCheckpoint::Open(ModelDir(model));
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
    std::vector<ExpectedTensor> specs = LlamaFamilyTensorSpecs(config);
    std::set<std::string> spec_names;
    for (const auto& s : specs) {
      spec_names.insert(s.name);
      auto t = (*ckpt)->Get(s.name);
      ASSERT_TRUE(t.ok()) << t.status().ToString();
      EXPECT_EQ(t->shape, s.shape) << s.name;
      EXPECT_EQ(t->dtype, s.dtype) << s.name;
    }
    std::vector<std::string> names = (*ckpt)->TensorNames();
    EXPECT_EQ(std::set<std::string>(names.begin(), names.end()), spec_names);
  }
}

TEST(TensorSpecsTest, BiasesAndTying) {
  ModelConfig qwen = LoadShipped("qwen2.5-7b.json");
  std::set<std::string> names;
  for (const auto& s : LlamaFamilyTensorSpecs(qwen)) names.insert(s.name);
  EXPECT_TRUE(names.contains("model.layers.0.self_attn.q_proj.bias"));
  EXPECT_TRUE(names.contains("model.layers.27.self_attn.v_proj.bias"));
  EXPECT_FALSE(names.contains("model.layers.0.self_attn.o_proj.bias"));
  EXPECT_TRUE(names.contains("lm_head.weight"));
  EXPECT_EQ(names.size(), static_cast<size_t>(3 + qwen.num_layers * (9 + 3)));

  ModelConfig llama = LoadShipped("llama-3.2-1b.json");
  llama.attention_bias = llama.attention_output_bias = llama.mlp_bias = true;
  names.clear();
  for (const auto& s : LlamaFamilyTensorSpecs(llama)) names.insert(s.name);
  EXPECT_TRUE(names.contains("model.layers.0.self_attn.o_proj.bias"));
  EXPECT_TRUE(names.contains("model.layers.15.mlp.down_proj.bias"));
  EXPECT_FALSE(names.contains("lm_head.weight"));  // tied
}

TEST(TensorSpecsTest, Llama31_8BParameterCount) {
  // 8.03B parameters, as published for Llama-3.1-8B.
  int64_t params = 0;
  for (const auto& s : LlamaFamilyTensorSpecs(LoadShipped("llama-3.1-8b.json"))) params += s.numel();
  EXPECT_GT(params, 8'000'000'000);
  EXPECT_LT(params, 8'050'000'000);
}

TEST(DummyWeightsTest, ShapesMatchSpecs) {
  ModelConfig config = TinyConfig("tiny-llama31");
  DummyWeightSource dummy(config, 1);
  std::vector<ExpectedTensor> specs = LlamaFamilyTensorSpecs(config);
  ASSERT_EQ(dummy.TensorNames().size(), specs.size());
  for (const auto& s : specs) {
    ASSERT_TRUE(dummy.Contains(s.name)) << s.name;
    auto t = dummy.Get(s.name);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(t->shape, s.shape) << s.name;
    EXPECT_EQ(t->dtype, DType::kBF16) << s.name;
    EXPECT_EQ(t->name, s.name);
  }
  auto missing = dummy.Get("lm_head.bias");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("lm_head.bias"), std::string::npos);
  EXPECT_FALSE(dummy.Contains("lm_head.bias"));
}

TEST(DummyWeightsTest, DeterministicPerSeedDifferentAcrossSeeds) {
  ModelConfig config = TinyConfig("tiny-llama31");
  DummyWeightSource a(config, 7), b(config, 7), c(config, 8);
  for (const std::string& name : a.TensorNames()) {
    SCOPED_TRACE(name);
    auto ta = a.Get(name), tb = b.Get(name), tc = c.Get(name);
    ASSERT_TRUE(ta.ok() && tb.ok() && tc.ok());
    EXPECT_EQ(std::memcmp(ta->data, tb->data, ta->nbytes()), 0);
    EXPECT_NE(std::memcmp(ta->data, tc->data, ta->nbytes()), 0);
  }
  // Two layers' same-shaped tensors differ.
  auto q0 = a.Get("model.layers.0.self_attn.q_proj.weight");
  auto q1 = a.Get("model.layers.1.self_attn.q_proj.weight");
  ASSERT_TRUE(q0.ok() && q1.ok());
  EXPECT_NE(std::memcmp(q0->data, q1->data, q0->nbytes()), 0);
}

TEST(DummyWeightsTest, RegeneratesSameBytesAfterRelease) {
  ModelConfig config = TinyConfig("tiny-llama31");
  DummyWeightSource dummy(config, 3);
  std::vector<std::byte> first;
  {
    auto t = dummy.Get("model.layers.1.mlp.up_proj.weight");
    ASSERT_TRUE(t.ok());
    first.assign(t->data, t->data + t->nbytes());
    auto again = dummy.Get("model.layers.1.mlp.up_proj.weight");
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->data, t->data);  // cached while a view is alive
  }
  auto t = dummy.Get("model.layers.1.mlp.up_proj.weight");
  ASSERT_TRUE(t.ok());
  ASSERT_EQ(t->nbytes(), first.size());
  EXPECT_EQ(std::memcmp(t->data, first.data(), first.size()), 0);
}

TEST(DummyWeightsTest, ConcurrentGetsAgree) {
  ModelConfig config = TinyConfig("tiny-llama31");
  DummyWeightSource dummy(config, 11);
  std::vector<HostTensor> got(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < got.size(); ++i) {
    threads.emplace_back([&, i] {
      auto t = dummy.Get("model.embed_tokens.weight");
      if (t.ok()) got[i] = *t;
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& t : got) {
    ASSERT_NE(t.data, nullptr);
    EXPECT_EQ(t.data, got[0].data);  // generated once
  }
}

TEST(DummyWeightsTest, ValueStatistics) {
  ModelConfig config = TinyConfig("tiny-llama31");
  config.attention_bias = true;
  DummyWeightSource dummy(config, 5);
  double mean = 0, std = 0;

  auto emb = dummy.Get("model.embed_tokens.weight");  // 512k values
  ASSERT_TRUE(emb.ok());
  MeanStd(ToFloats(*emb), &mean, &std);
  EXPECT_NEAR(mean, 0.0, 0.001);
  EXPECT_NEAR(std, DummyWeightSource::kMatrixStd, 0.05 * DummyWeightSource::kMatrixStd);

  auto norm = dummy.Get("model.layers.0.input_layernorm.weight");
  ASSERT_TRUE(norm.ok());
  MeanStd(ToFloats(*norm), &mean, &std);
  EXPECT_NEAR(mean, 1.0, 0.01);
  EXPECT_GT(std, 0.0);
  EXPECT_LT(std, 0.1);

  auto bias = dummy.Get("model.layers.0.self_attn.q_proj.bias");
  ASSERT_TRUE(bias.ok());
  MeanStd(ToFloats(*bias), &mean, &std);
  EXPECT_NEAR(mean, 0.0, 0.01);
  EXPECT_GT(std, 0.0);
  EXPECT_LT(std, 0.05);
}

TEST(DummyWeightsTest, LargeShapesAreLazy) {
  // A Llama-3.1-8B shape: construction is instant; only the tensor asked for is materialised.
  ModelConfig config = LoadShipped("llama-3.1-8b.json");
  DummyWeightSource dummy(config, 0);
  EXPECT_EQ(dummy.specs().size(), LlamaFamilyTensorSpecs(config).size());
  auto norm = dummy.Get("model.layers.31.post_attention_layernorm.weight");
  ASSERT_TRUE(norm.ok());
  EXPECT_EQ(norm->shape, (std::vector<int64_t>{config.hidden_size}));
  auto k = dummy.Get("model.layers.0.self_attn.k_proj.weight");  // 1024 x 4096: multi-threaded path
  ASSERT_TRUE(k.ok());
  double mean = 0, std = 0;
  MeanStd(ToFloats(*k), &mean, &std);
  EXPECT_NEAR(std, DummyWeightSource::kMatrixStd, 0.05 * DummyWeightSource::kMatrixStd);
}

}  // namespace
}  // namespace tandem
