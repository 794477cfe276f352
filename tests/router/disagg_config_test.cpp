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
