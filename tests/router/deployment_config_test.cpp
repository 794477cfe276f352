// DeploymentConfig (src/common/config_yaml.h), the YAML that `tandem serve` runs: the shipped
// config parses and validates; typos, wrong types and bad values are errors naming the key.
#include <gtest/gtest.h>

#include "common/config_yaml.h"
#include "support/testdata.h"

namespace tandem {
namespace {

StatusOr<DeploymentConfig> Parse(const std::string& yaml) {
  return ParseDeploymentConfig(yaml, "/base/dir");
}

void ExpectInvalid(const std::string& yaml, const std::string& needle) {
  auto config = Parse(yaml);
  ASSERT_FALSE(config.ok()) << yaml;
  EXPECT_EQ(config.status().code(), StatusCode::kInvalidArgument) << config.status().ToString();
  EXPECT_NE(config.status().message().find(needle), std::string::npos) << config.status().message();
}

TEST(DeploymentConfigTest, ShippedCpuColocatedConfigParsesAndValidates) {
  const auto path = testing::SourceDir() / "configs" / "cpu-colocated.yaml";
  auto config = LoadDeploymentConfig(path);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_TRUE(config->Validate().ok()) << config->Validate().ToString();
  EXPECT_EQ(config->deployment, "colocated");
  EXPECT_EQ(config->model.backend, "cpu");
  EXPECT_EQ(config->model.name, "tiny-llama");
  // Relative to the config's directory: configs/../../shared/testdata/models/tiny-llama.
  EXPECT_EQ(std::filesystem::path(config->model.path),
            (path.parent_path() / "../../shared/testdata/models/tiny-llama").lexically_normal());
  EXPECT_NE(config->server.listen.find("127.0.0.1:"), std::string::npos);
  EXPECT_EQ(config->engine.kv_cache_bytes, static_cast<int64_t>(config->kv_cache_gib * (1LL << 30)));
}

TEST(DeploymentConfigTest, EveryKeyIsReadAndEmptyMeansDefaults) {
  auto config = Parse(R"(
deployment: colocated
log_level: debug
model: {path: /m, name: m1, backend: cuda, threads: 3, device: 1, gpu_memory_utilization: 0.5,
        dummy_weights: true, dummy_seed: 9}
engine: {block_size: 32, num_kv_blocks: 100, kv_cache_gib: 1.5, max_num_batched_tokens: 512,
         max_num_seqs: 8, max_model_len: 1024, enable_prefix_caching: false,
         enable_chunked_prefill: no, enable_cuda_graphs: false, scheduling_policy: priority, seed: 5}
server: {listen: "0.0.0.0:9000", max_live_requests: 7, max_threads: 20, shutdown_grace_s: 2.5,
         poll_interval_ms: 10}
)");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->log_level, "debug");
  EXPECT_EQ(config->model.path, "/m");  // absolute: kept
  EXPECT_EQ(config->model.name, "m1");
  EXPECT_EQ(config->model.backend, "cuda");
  EXPECT_EQ(config->model.threads, 3);
  EXPECT_EQ(config->model.device, 1);
  EXPECT_EQ(config->model.gpu_memory_utilization, 0.5);
  EXPECT_TRUE(config->model.dummy_weights);
  EXPECT_EQ(config->model.dummy_seed, 9u);
  EXPECT_EQ(config->engine.block_size, 32);
  EXPECT_EQ(config->engine.num_kv_blocks, 100);
  EXPECT_EQ(config->kv_cache_gib, 1.5);
  EXPECT_EQ(config->engine.max_num_batched_tokens, 512);
  EXPECT_EQ(config->engine.max_num_seqs, 8);
  EXPECT_EQ(config->engine.max_model_len, 1024);
  EXPECT_FALSE(config->engine.enable_prefix_caching);
  EXPECT_FALSE(config->engine.enable_chunked_prefill);
  EXPECT_FALSE(config->engine.enable_cuda_graphs);
  EXPECT_EQ(config->engine.scheduling_policy, "priority");
  EXPECT_EQ(config->engine.seed, 5u);
  EXPECT_EQ(config->server.listen, "0.0.0.0:9000");
  EXPECT_EQ(config->server.max_live_requests, 7);
  EXPECT_EQ(config->server.max_threads, 20);
  EXPECT_EQ(config->server.shutdown_grace_s, 2.5);
  EXPECT_EQ(config->server.poll_interval_ms, 10);
  EXPECT_TRUE(config->Validate().ok()) << config->Validate().ToString();

  auto empty = Parse("");
  ASSERT_TRUE(empty.ok()) << empty.status().ToString();
  EXPECT_EQ(empty->server.listen, ServerSection().listen);
  EXPECT_EQ(empty->engine.block_size, EngineConfig().block_size);
  EXPECT_NE(empty->Validate().message().find("model.path"), std::string::npos);  // nothing to serve

  auto relative = Parse("model: {path: models/x}");
  ASSERT_TRUE(relative.ok());
  EXPECT_EQ(relative->model.path, "/base/dir/models/x");
}

TEST(DeploymentConfigTest, TyposWrongTypesAndBadValuesNameTheKey) {
  ExpectInvalid("engine: {blok_size: 16}", "engine.blok_size");
  ExpectInvalid("modle: {path: x}", "unknown key 'modle'");
  ExpectInvalid("engine: {block_size: sixteen}", "engine.block_size");
  ExpectInvalid("server: {max_live_requests: [1, 2]}", "server.max_live_requests");
  ExpectInvalid("model: [a, b]", "model must be a mapping");
  ExpectInvalid("- just\n- a list", "mapping");
  ExpectInvalid("engine: {block_size: 16", "not valid YAML");

  auto validate = [](const std::string& yaml) {
    auto config = Parse(yaml);
    EXPECT_TRUE(config.ok()) << config.status().ToString();
    return config.ok() ? config->Validate() : config.status();
  };
  Status s = validate("model: {path: /m}\ndeployment: disaggregated");
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented) << s.ToString();
  s = validate("model: {path: /m}\ndeployment: sideways");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  s = validate("model: {path: /m}\nserver: {listen: localhost}");
  EXPECT_NE(s.message().find("host:port"), std::string::npos) << s.ToString();
  s = validate("model: {path: /m}\nserver: {poll_interval_ms: 0}");
  EXPECT_NE(s.message().find("poll_interval_ms"), std::string::npos) << s.ToString();
  s = validate("model: {path: /m}\nengine: {block_size: 0}");
  EXPECT_NE(s.message().find("block_size"), std::string::npos) << s.ToString();
}

TEST(DeploymentConfigTest, MissingFileIsNotFound) {
  auto config = LoadDeploymentConfig("/nonexistent/tandem.yaml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), StatusCode::kNotFound);
  EXPECT_NE(config.status().message().find("/nonexistent/tandem.yaml"), std::string::npos);
}

}  // namespace
}  // namespace tandem
