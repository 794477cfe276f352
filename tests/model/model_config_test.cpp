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

// --- the four shipped configs --------------------------------------------------------------------

class ShippedConfigTest : public ::testing::TestWithParam<const char*> {};

TEST_P(ShippedConfigTest, Parses) {
  const auto path = SourceDir() / "configs" / "models" / GetParam();
  json j = ReadJson(path);
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  auto c = ParseModelConfig(ss.str(), path.string());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ExpectCommonFields(*c, j);
  EXPECT_DOUBLE_EQ(c->rope.theta, j["rope_theta"].get<double>());
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    EXPECT_EQ(RopeTypeName(c->rope.type), j["rope_scaling"]["rope_type"].get<std::string>());
    EXPECT_DOUBLE_EQ(c->rope.factor, j["rope_scaling"]["factor"].get<double>());
    EXPECT_EQ(c->rope.original_max_position_embeddings,
              j["rope_scaling"]["original_max_position_embeddings"].get<int64_t>());
  } else {
    EXPECT_EQ(c->rope.type, RopeType::kDefault);
  }
  const std::string arch = j["architectures"][0].get<std::string>();
  if (arch == "Qwen2ForCausalLM") {
    EXPECT_EQ(c->arch, ModelArch::kQwen2);
    EXPECT_TRUE(c->attention_bias);
    EXPECT_FALSE(c->attention_output_bias);
    ASSERT_FALSE(j["use_sliding_window"].get<bool>());
    EXPECT_FALSE(c->sliding_window.has_value());
  } else if (arch == "MistralForCausalLM") {
    EXPECT_EQ(c->arch, ModelArch::kMistral);
    EXPECT_EQ(c->sliding_window.has_value(), !j["sliding_window"].is_null());
    EXPECT_FALSE(c->attention_bias);
  } else {
    EXPECT_EQ(c->arch, ModelArch::kLlama);
    EXPECT_EQ(c->attention_bias, j["attention_bias"].get<bool>());
    EXPECT_EQ(c->mlp_bias, j["mlp_bias"].get<bool>());
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, ShippedConfigTest,
                         ::testing::Values("llama-3.1-8b.json", "llama-3.2-1b.json",
                                           "qwen2.5-7b.json", "mistral-7b.json"));

// --- variations on a valid config ----------------------------------------------------------------

json BaseConfig() { return ReadJson(ModelDir("tiny-llama31") / "config.json"); }

StatusOr<ModelConfig> Parse(const json& j) { return ParseModelConfig(j.dump(), "config.json"); }

// Expects an InvalidArgument whose message names config.json and every one of `needles`.
void ExpectInvalid(const json& j, std::initializer_list<std::string> needles) {
  auto c = Parse(j);
  ASSERT_FALSE(c.ok()) << "parsed unexpectedly: " << j.dump();
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument) << c.status().ToString();
  EXPECT_NE(c.status().message().find("config.json"), std::string::npos) << c.status().ToString();
  for (const std::string& n : needles) {
    EXPECT_NE(c.status().message().find(n), std::string::npos)
        << "'" << n << "' not in: " << c.status().ToString();
  }
}

TEST(ModelConfigTest, KvHeadsMustDivideHeads) {
  json j = BaseConfig();
  j["num_attention_heads"] = 12;
  j["head_dim"] = 16;
  j["num_key_value_heads"] = 5;
  ExpectInvalid(j, {"num_attention_heads (12) must be a multiple of num_key_value_heads (5)"});
}

TEST(ModelConfigTest, KvHeadsDefaultToHeads) {
  json j = BaseConfig();
  j.erase("num_key_value_heads");
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->num_kv_heads, c->num_heads);
}

TEST(ModelConfigTest, HeadDimFromHiddenSize) {
  json j = BaseConfig();
  j.erase("head_dim");
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->head_dim, j["hidden_size"].get<int64_t>() / j["num_attention_heads"].get<int64_t>());
  j["head_dim"] = nullptr;
  ASSERT_TRUE(Parse(j).ok());
  j["num_attention_heads"] = 3;
  j["num_key_value_heads"] = 1;
  ExpectInvalid(j, {"hidden_size", "num_attention_heads (3)"});
}

TEST(ModelConfigTest, UnknownArchitectureListsSupported) {
  json j = BaseConfig();
  j["architectures"] = {"GPTNeoXForCausalLM"};
  ExpectInvalid(j, {"GPTNeoXForCausalLM", "LlamaForCausalLM", "MistralForCausalLM",
                    "Qwen2ForCausalLM"});
  j.erase("architectures");
  j["model_type"] = "gpt_neox";
  ExpectInvalid(j, {"gpt_neox", "LlamaForCausalLM"});
  j["model_type"] = "qwen2";
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->arch, ModelArch::kQwen2);
}

TEST(ModelConfigTest, RejectsBadFields) {
  struct Case {
    const char* field;
    json value;
  };
  const Case cases[] = {
      {"hidden_act", "gelu"},      {"hidden_size", -64},         {"hidden_size", "64"},
      {"vocab_size", 0},           {"num_hidden_layers", 2.5},   {"intermediate_size", nullptr},
      {"rms_norm_eps", -1.0},      {"rms_norm_eps", "small"},    {"tie_word_embeddings", "yes"},
      {"torch_dtype", "int8"},     {"rope_theta", -5.0},         {"eos_token_id", "two"},
      {"eos_token_id", {1, -2}},   {"max_position_embeddings", 0}, {"head_dim", 0},
      {"num_key_value_heads", 0},  {"rope_scaling", "llama3"},   {"bos_token_id", 1.5},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.field) + " = " + c.value.dump());
    json j = BaseConfig();
    j[c.field] = c.value;
    ExpectInvalid(j, {c.field});
  }
  for (const char* required : {"hidden_size", "vocab_size", "num_hidden_layers",
                               "num_attention_heads", "intermediate_size"}) {
    SCOPED_TRACE(required);
    json j = BaseConfig();
    j.erase(required);
    ExpectInvalid(j, {required, "required"});
  }
}

TEST(ModelConfigTest, RejectsMalformedJson) {
  auto c = ParseModelConfig("{\"architectures\": [", "some/dir/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("some/dir/config.json"), std::string::npos);
  auto arr = ParseModelConfig("[1, 2]", "config.json");
  ASSERT_FALSE(arr.ok());
  EXPECT_NE(arr.status().message().find("object"), std::string::npos);
}

TEST(ModelConfigTest, RopeScalingVariants) {
  {  // classic linear with the old `type` key
    json j = BaseConfig();
    j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
    auto c = Parse(j);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->rope.type, RopeType::kLinear);
    EXPECT_DOUBLE_EQ(c->rope.factor, 2.0);
  }
  {  // dynamic
    json j = BaseConfig();
    j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 4.0}};
    auto c = Parse(j);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->rope.type, RopeType::kDynamic);
    EXPECT_DOUBLE_EQ(c->rope.factor, 4.0);
  }
  {  // yarn, new form, every field
    json j = BaseConfig();
    j.erase("rope_scaling");
    j.erase("rope_theta");
    j["rope_parameters"] = {{"rope_type", "yarn"},
                            {"rope_theta", 1000000.0},
                            {"factor", 4.0},
                            {"original_max_position_embeddings", 32768},
                            {"beta_fast", 16.0},
                            {"beta_slow", 2.0},
                            {"attention_factor", 1.2}};
    auto c = Parse(j);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->rope.type, RopeType::kYarn);
    EXPECT_DOUBLE_EQ(c->rope.theta, 1000000.0);
    EXPECT_DOUBLE_EQ(c->rope.factor, 4.0);
    EXPECT_EQ(c->rope.original_max_position_embeddings, 32768);
    EXPECT_DOUBLE_EQ(c->rope.beta_fast, 16.0);
    EXPECT_DOUBLE_EQ(c->rope.beta_slow, 2.0);
    ASSERT_TRUE(c->rope.attention_factor.has_value());
    EXPECT_DOUBLE_EQ(*c->rope.attention_factor, 1.2);
  }
  {  // yarn defaults: original context = max_position_embeddings, no attention_factor override
    json j = BaseConfig();
    j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
    auto c = Parse(j);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->rope.original_max_position_embeddings, j["max_position_embeddings"].get<int64_t>());
    EXPECT_FALSE(c->rope.attention_factor.has_value());
  }
  {  // llama3 in the new form
    json j = BaseConfig();
    json params = j["rope_scaling"];
    params["rope_theta"] = j["rope_theta"];
    j.erase("rope_scaling");
    j.erase("rope_theta");
    j["rope_parameters"] = params;
    auto c = Parse(j);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->rope.type, RopeType::kLlama3);
    EXPECT_DOUBLE_EQ(c->rope.theta, params["rope_theta"].get<double>());
    EXPECT_DOUBLE_EQ(c->rope.factor, params["factor"].get<double>());
  }
  {  // null rope_scaling: default rope
    json j = BaseConfig();
    j["rope_scaling"] = nullptr;
    auto c = Parse(j);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->rope.type, RopeType::kDefault);
  }
}

TEST(ModelConfigTest, RejectsBadRope) {
  {
    json j = BaseConfig();
    j["rope_scaling"]["rope_type"] = "longrope";
    ExpectInvalid(j, {"rope_scaling.rope_type", "longrope", "llama3", "yarn"});
  }
  for (const char* field : {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings",
                            "factor"}) {
    SCOPED_TRACE(field);
    json j = BaseConfig();
    j["rope_scaling"].erase(field);
    ExpectInvalid(j, {std::string("rope_scaling.") + field, "required"});
  }
  {
    json j = BaseConfig();
    j["rope_scaling"]["high_freq_factor"] = 0.5;
    ExpectInvalid(j, {"high_freq_factor", "low_freq_factor"});
  }
  {
    json j = BaseConfig();
    j["rope_scaling"] = {{"type", "linear"}};
    ExpectInvalid(j, {"rope_scaling.factor", "required"});
  }
  {
    json j = BaseConfig();
    j["rope_scaling"] = {{"type", "linear"}, {"factor", -1.0}};
    ExpectInvalid(j, {"rope_scaling.factor"});
  }
  {
    json j = BaseConfig();
    j["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"beta_fast", -1}};
    ExpectInvalid(j, {"rope_parameters.beta_fast"});
  }
  {
    json j = BaseConfig();
    j["rope_parameters"] = 5;
    ExpectInvalid(j, {"rope_parameters"});
  }
}

TEST(ModelConfigTest, LlamaBiases) {
  json j = BaseConfig();
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  j["tie_word_embeddings"] = true;
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->attention_bias);
  EXPECT_TRUE(c->attention_output_bias);
  EXPECT_TRUE(c->mlp_bias);
  EXPECT_TRUE(c->tie_word_embeddings);
}

TEST(ModelConfigTest, Qwen2SlidingWindow) {
  json j = ReadJson(SourceDir() / "configs" / "models" / "qwen2.5-7b.json");
  j["use_sliding_window"] = true;
  j["max_window_layers"] = 0;
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_TRUE(c->sliding_window.has_value());
  EXPECT_EQ(*c->sliding_window, j["sliding_window"].get<int64_t>());
  j["max_window_layers"] = j["num_hidden_layers"];  // no layer uses the window
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_FALSE(c->sliding_window.has_value());
  j["max_window_layers"] = 4;  // per-layer windows are not supported
  ExpectInvalid(j, {"max_window_layers"});
  j["attention_bias"] = false;  // Qwen2 ignores it: q/k/v are always biased
  j["use_sliding_window"] = false;
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->attention_bias);
}

TEST(ModelConfigTest, MistralSlidingWindow) {
  json j = ReadJson(SourceDir() / "configs" / "models" / "mistral-7b.json");
  j["sliding_window"] = 4096;
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_TRUE(c->sliding_window.has_value());
  EXPECT_EQ(*c->sliding_window, 4096);
  j["sliding_window"] = -1;
  ExpectInvalid(j, {"sliding_window"});
}

TEST(ModelConfigTest, DtypeForms) {
  json j = BaseConfig();
  j.erase("torch_dtype");
  j["dtype"] = "float16";
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->dtype, DType::kF16);
  j["dtype"] = "float32";
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->dtype, DType::kF32);
  j["dtype"] = "float8";
  ExpectInvalid(j, {"dtype", "float8"});
}

TEST(ModelConfigTest, LoadMergesGenerationConfigEos) {
  ScratchDir dir;
  json j = BaseConfig();
  j["eos_token_id"] = {7, 8};
  WriteFile(dir.path() / "config.json", j.dump());
  WriteFile(dir.path() / "generation_config.json", R"({"eos_token_id": [8, 9], "bos_token_id": 1})");
  auto c = LoadModelConfig(dir.path());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{7, 8, 9}));

  WriteFile(dir.path() / "generation_config.json", R"({"eos_token_id": "x"})");
  c = LoadModelConfig(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("generation_config.json"), std::string::npos)
      << c.status().ToString();
  EXPECT_NE(c.status().message().find("eos_token_id"), std::string::npos) << c.status().ToString();

  WriteFile(dir.path() / "generation_config.json", "{not json");
  c = LoadModelConfig(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("generation_config.json"), std::string::npos)
      << c.status().ToString();

  std::filesystem::remove(dir.path() / "generation_config.json");
  c = LoadModelConfig(dir.path());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{7, 8}));
}

TEST(ModelConfigTest, LoadMissingConfigIsNotFound) {
  ScratchDir dir;
  auto c = LoadModelConfig(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kNotFound);
  EXPECT_NE(c.status().message().find("config.json"), std::string::npos);
}

}  // namespace
}  // namespace tandem
