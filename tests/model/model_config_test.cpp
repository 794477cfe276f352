#include "model/model_config.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "support/testdata.h"

namespace tandem {
namespace {

using nlohmann::json;
using testing::ModelDir;
using testing::ScratchDir;
using testing::SourceDir;

json ReadJson(const std::filesystem::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return json::parse(ss.str());
}

void WriteFile(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// The fields every architecture shares, checked against the json read independently.
void ExpectCommonFields(const ModelConfig& c, const json& j) {
  EXPECT_EQ(c.architecture, j["architectures"][0].get<std::string>());
  EXPECT_EQ(c.vocab_size, j["vocab_size"].get<int64_t>());
  EXPECT_EQ(c.hidden_size, j["hidden_size"].get<int64_t>());
  EXPECT_EQ(c.intermediate_size, j["intermediate_size"].get<int64_t>());
  EXPECT_EQ(c.num_layers, j["num_hidden_layers"].get<int64_t>());
  EXPECT_EQ(c.num_heads, j["num_attention_heads"].get<int64_t>());
  EXPECT_EQ(c.num_kv_heads, j["num_key_value_heads"].get<int64_t>());
  if (j.contains("head_dim") && !j["head_dim"].is_null()) {
    EXPECT_EQ(c.head_dim, j["head_dim"].get<int64_t>());
  } else {
    EXPECT_EQ(c.head_dim, c.hidden_size / c.num_heads);
  }
  EXPECT_EQ(c.max_position_embeddings, j["max_position_embeddings"].get<int64_t>());
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, j["rms_norm_eps"].get<double>());
  EXPECT_EQ(c.tie_word_embeddings, j.value("tie_word_embeddings", false));
  EXPECT_EQ(c.dtype, DType::kBF16);
  if (j.contains("bos_token_id") && !j["bos_token_id"].is_null()) {
    ASSERT_TRUE(c.bos_token_id.has_value());
    EXPECT_EQ(*c.bos_token_id, j["bos_token_id"].get<int64_t>());
  }
  std::vector<int64_t> eos;
  if (j["eos_token_id"].is_array()) {
    eos = j["eos_token_id"].get<std::vector<int64_t>>();
  } else {
    eos.push_back(j["eos_token_id"].get<int64_t>());
  }
  EXPECT_EQ(c.eos_token_ids, eos);
}

TEST(ModelConfigTest, TinyLlamaNewRopeParametersForm) {
  const auto dir = ModelDir("tiny-llama");
  json j = ReadJson(dir / "config.json");
  ASSERT_TRUE(j.contains("rope_parameters")) << "test model changed: expected the new form";
  auto c = LoadModelConfig(dir);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ExpectCommonFields(*c, j);
  EXPECT_EQ(c->arch, ModelArch::kLlama);
  EXPECT_EQ(RopeTypeName(c->rope.type), j["rope_parameters"]["rope_type"].get<std::string>());
  EXPECT_DOUBLE_EQ(c->rope.theta, j["rope_parameters"]["rope_theta"].get<double>());
  EXPECT_DOUBLE_EQ(c->rope.factor, 1.0);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_FALSE(c->attention_output_bias);
  EXPECT_FALSE(c->mlp_bias);
  EXPECT_FALSE(c->sliding_window.has_value());
}

TEST(ModelConfigTest, TinyLlama31ClassicLlama3Rope) {
  const auto dir = ModelDir("tiny-llama31");
  json j = ReadJson(dir / "config.json");
  ASSERT_TRUE(j.contains("rope_scaling")) << "test model changed: expected the classic form";
  auto c = LoadModelConfig(dir);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ExpectCommonFields(*c, j);
  const json& s = j["rope_scaling"];
  EXPECT_EQ(c->rope.type, RopeType::kLlama3);
  EXPECT_EQ(RopeTypeName(c->rope.type), s["rope_type"].get<std::string>());
  EXPECT_DOUBLE_EQ(c->rope.theta, j["rope_theta"].get<double>());
  EXPECT_DOUBLE_EQ(c->rope.factor, s["factor"].get<double>());
  EXPECT_DOUBLE_EQ(c->rope.low_freq_factor, s["low_freq_factor"].get<double>());
  EXPECT_DOUBLE_EQ(c->rope.high_freq_factor, s["high_freq_factor"].get<double>());
  EXPECT_EQ(c->rope.original_max_position_embeddings,
            s["original_max_position_embeddings"].get<int64_t>());
}

}  // namespace
}  // namespace tandem
