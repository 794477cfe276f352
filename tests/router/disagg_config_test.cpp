// DisaggDeploymentConfig (src/router/disagg_config.h): the shipped disaggregated configs parse,
// the supervisor's restart keys are read and checked.
#include <gtest/gtest.h>

#include <fstream>

#include "router/disagg_config.h"
#include "support/testdata.h"

namespace tandem {
namespace {

StatusOr<DisaggDeploymentConfig> LoadText(const std::string& name, const std::string& yaml) {
  const auto path = std::filesystem::temp_directory_path() / name;
  std::ofstream(path) << yaml;
  auto config = LoadDisaggDeploymentConfig(path);
  std::filesystem::remove(path);
  return config;
}

const char* kHead = R"(
deployment: disaggregated
model: {path: /m, name: m, backend: cpu}
)";

TEST(DisaggConfigTest, ShippedConfigsParseWithTheirPoolSizes) {
  for (const auto& [file, workers] : {std::pair("cpu-disagg.yaml", 1), std::pair("cpu-disagg-2p2d.yaml", 2)}) {
    auto config = LoadDisaggDeploymentConfig(testing::SourceDir() / "configs" / file);
    ASSERT_TRUE(config.ok()) << file << ": " << config.status().ToString();
    EXPECT_TRUE(config->disaggregated) << file;
    EXPECT_EQ(config->disagg.prefill_workers, workers) << file;
    EXPECT_EQ(config->disagg.decode_workers, workers) << file;
    EXPECT_TRUE(config->disagg.restart_workers) << file;
    EXPECT_TRUE(config->base.Validate().ok()) << file;
  }
}

TEST(DisaggConfigTest, PerWorkerEngineOverridesApplyByIndex) {
  auto config = LoadText("tandem_disagg_overrides.yaml", std::string(kHead) + R"(
engine: {block_size: 16, num_kv_blocks: 256, max_num_seqs: 8}
disaggregated:
  prefill_workers: 1
  decode_workers: 3
  stats_interval_ms: 50
  decode_engine:
    - {num_kv_blocks: 24}
    - {}
)");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->disagg.stats_interval_ms, 50);
  ASSERT_EQ(config->disagg.decode_engines.size(), 2u);
  ASSERT_TRUE(config->disagg.prefill_engines.empty());
  const DeploymentConfig d0 = WorkerDeploymentConfig(*config, EngineRole::kDecode, 0);
  EXPECT_EQ(d0.engine.num_kv_blocks, 24);
  EXPECT_EQ(d0.engine.max_num_seqs, 8);  // the rest of the engine section stays
  EXPECT_EQ(WorkerDeploymentConfig(*config, EngineRole::kDecode, 1).engine.num_kv_blocks, 256);
  EXPECT_EQ(WorkerDeploymentConfig(*config, EngineRole::kDecode, 2).engine.num_kv_blocks, 256);
  EXPECT_EQ(WorkerDeploymentConfig(*config, EngineRole::kDecode, -1).engine.num_kv_blocks, 256);
  EXPECT_EQ(WorkerDeploymentConfig(*config, EngineRole::kPrefill, 0).engine.num_kv_blocks, 256);
  EXPECT_EQ(config->base.engine.num_kv_blocks, 256);
}

TEST(DisaggConfigTest, BadOverridesNameTheirEntry) {
  for (const auto& [yaml, needle] : {
           std::pair("disaggregated: {decode_workers: 1, decode_engine: [{}, {}]}", "2 entries for 1"),
           std::pair("disaggregated: {decode_engine: [{num_kv_blocs: 3}]}", "decode_engine[0]"),
           std::pair("disaggregated: {prefill_engine: [{block_size: -1}]}", "prefill_engine[0]"),
           std::pair("disaggregated: {prefill_engine: {num_kv_blocks: 3}}", "list"),
           std::pair("disaggregated: {stats_interval_ms: 0}", "stats_interval_ms"),
       }) {
    auto bad = LoadText("tandem_disagg_bad_override.yaml", std::string(kHead) + yaml + "\n");
    ASSERT_FALSE(bad.ok()) << yaml;
    EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument) << yaml;
    EXPECT_NE(bad.status().message().find(needle), std::string::npos) << bad.status().message();
  }
}

TEST(DisaggConfigTest, RestartKeysAreReadAndChecked) {
  auto config = LoadText("tandem_disagg_restart.yaml", std::string(kHead) + R"(
disaggregated: {restart_workers: false, restart_backoff_s: 0.25, restart_backoff_max_s: 4}
)");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_FALSE(config->disagg.restart_workers);
  EXPECT_EQ(config->disagg.restart_backoff_s, 0.25);
  EXPECT_EQ(config->disagg.restart_backoff_max_s, 4);

  auto bad = LoadText("tandem_disagg_bad.yaml", std::string(kHead) + R"(
disaggregated: {restart_backoff_s: 5, restart_backoff_max_s: 1}
)");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("restart_backoff"), std::string::npos) << bad.status().message();
}

TEST(DisaggConfigTest, GpuConfigsNameNcclAndOneDevicePerWorker) {
  auto config = LoadDisaggDeploymentConfig(testing::SourceDir() / "configs" / "gpu-disagg.yaml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->disagg.kv_transport, "nccl");
  EXPECT_EQ(config->base.model.backend, "cuda");
  EXPECT_EQ(config->disagg.prefill_devices, std::vector<int32_t>{0});
  EXPECT_EQ(config->disagg.decode_devices, std::vector<int32_t>{1});
  EXPECT_GT(config->disagg.kv_staging_mib, 0);
  EXPECT_TRUE(config->base.Validate().ok());
  auto colocated = LoadDisaggDeploymentConfig(testing::SourceDir() / "configs" / "gpu-colocated.yaml");
  ASSERT_TRUE(colocated.ok()) << colocated.status().ToString();
  EXPECT_FALSE(colocated->disaggregated);
  EXPECT_EQ(colocated->base.model.backend, "cuda");
}

TEST(DisaggConfigTest, TransportAndDeviceListsAreChecked) {
  for (const auto& [yaml, key] : {
           std::pair<std::string, std::string>("disaggregated: {kv_transport: rdma}", "kv_transport"),
           std::pair<std::string, std::string>("disaggregated: {kv_staging_mib: 0}", "kv_staging_mib"),
           std::pair<std::string, std::string>("disaggregated: {prefill_workers: 2, prefill_devices: [0]}",
                                               "prefill_devices"),
           std::pair<std::string, std::string>("disaggregated: {decode_devices: [-1]}", "decode_devices"),
       }) {
    auto bad = LoadText("tandem_disagg_devices.yaml", std::string(kHead) + yaml + "\n");
    ASSERT_FALSE(bad.ok()) << yaml;
    EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument) << yaml;
    EXPECT_NE(bad.status().message().find(key), std::string::npos) << bad.status().message();
  }
}

}  // namespace
}  // namespace tandem
