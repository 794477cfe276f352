#include "router/disagg_config.h"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <set>
#include <tuple>
#include <sstream>

namespace tandem {

StatusOr<DisaggDeploymentConfig> LoadDisaggDeploymentConfig(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) return NotFoundError("cannot read config file " + path.string());
  std::stringstream text;
  text << in.rdbuf();
  YAML::Node root;
  try {
    root = YAML::Load(text.str());
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(path.string() + ": config is not valid YAML: " + e.what());
  }
  DisaggDeploymentConfig config;
  if (root.IsMap() && root["deployment"]) {
    config.disaggregated = root["deployment"].as<std::string>("") == "disaggregated";
  }
  YAML::Node section;  // a default Node converts to true: track presence separately
  const bool has_section = root.IsMap() && root["disaggregated"];
  if (has_section) {
    section = root["disaggregated"];
    root.remove("disaggregated");
  }
  if (has_section && !config.disaggregated) {
    return InvalidArgumentError(path.string() + ": the disaggregated section needs deployment: "
                                "disaggregated");
  }
  if (config.disaggregated) root["deployment"] = "colocated";
  if (has_section) {
    if (!section.IsMap()) return InvalidArgumentError(path.string() + ": disaggregated must be a map");
    DisaggSection& d = config.disagg;
    const std::set<std::string> known = {"prefill_workers", "decode_workers", "worker_host",
                                         "kv_transport", "kv_connect_timeout_ms", "kv_io_timeout_ms",
                                         "worker_start_timeout_s", "restart_workers",
                                         "restart_backoff_s", "restart_backoff_max_s",
                                         "kv_staging_mib", "prefill_devices", "decode_devices"};
    try {
      for (const auto& kv : section) {
        const std::string key = kv.first.as<std::string>();
        if (known.count(key) == 0) {
          return InvalidArgumentError(path.string() + ": unknown key disaggregated." + key);
        }
      }
      if (section["prefill_workers"]) d.prefill_workers = section["prefill_workers"].as<int32_t>();
      if (section["decode_workers"]) d.decode_workers = section["decode_workers"].as<int32_t>();
      if (section["worker_host"]) d.worker_host = section["worker_host"].as<std::string>();
      if (section["kv_transport"]) d.kv_transport = section["kv_transport"].as<std::string>();
      if (section["kv_connect_timeout_ms"]) d.kv_connect_timeout_ms = section["kv_connect_timeout_ms"].as<int32_t>();
      if (section["kv_io_timeout_ms"]) d.kv_io_timeout_ms = section["kv_io_timeout_ms"].as<int32_t>();
      if (section["kv_staging_mib"]) d.kv_staging_mib = section["kv_staging_mib"].as<int32_t>();
      if (section["prefill_devices"]) d.prefill_devices = section["prefill_devices"].as<std::vector<int32_t>>();
      if (section["decode_devices"]) d.decode_devices = section["decode_devices"].as<std::vector<int32_t>>();
      if (section["worker_start_timeout_s"]) d.worker_start_timeout_s = section["worker_start_timeout_s"].as<double>();
      if (section["restart_workers"]) d.restart_workers = section["restart_workers"].as<bool>();
      if (section["restart_backoff_s"]) d.restart_backoff_s = section["restart_backoff_s"].as<double>();
      if (section["restart_backoff_max_s"]) d.restart_backoff_max_s = section["restart_backoff_max_s"].as<double>();
    } catch (const YAML::Exception& e) {
      return InvalidArgumentError(path.string() + ": disaggregated: " + e.what());
    }
    if (d.prefill_workers < 1 || d.decode_workers < 1) {
      return InvalidArgumentError(path.string() + ": disaggregated needs >= 1 prefill and decode worker");
    }
    if (d.kv_transport != "tcp" && d.kv_transport != "nccl") {
      return InvalidArgumentError(path.string() + ": disaggregated.kv_transport must be tcp or nccl, got '" +
                                  d.kv_transport + "'");
    }
    if (d.kv_staging_mib < 1) {
      return InvalidArgumentError(path.string() + ": disaggregated.kv_staging_mib must be positive");
    }
    for (const auto& [name, devices, count] :
         {std::tuple<const char*, const std::vector<int32_t>&, int32_t>("prefill_devices", d.prefill_devices,
                                                                        d.prefill_workers),
          std::tuple<const char*, const std::vector<int32_t>&, int32_t>("decode_devices", d.decode_devices,
                                                                        d.decode_workers)}) {
      if (!devices.empty() && static_cast<int32_t>(devices.size()) != count) {
        return InvalidArgumentError(path.string() + ": disaggregated." + name + " lists " +
                                    std::to_string(devices.size()) + " devices for " + std::to_string(count) +
                                    " workers");
      }
      for (int32_t device : devices) {
        if (device < 0) return InvalidArgumentError(path.string() + ": disaggregated." + name + " has a negative device");
      }
    }
    if (!(d.restart_backoff_s > 0) || !(d.restart_backoff_max_s >= d.restart_backoff_s)) {
      return InvalidArgumentError(path.string() + ": disaggregated needs 0 < restart_backoff_s <= "
                                  "restart_backoff_max_s");
    }
    if (d.kv_connect_timeout_ms < 1 || d.kv_io_timeout_ms < 1) {
      return InvalidArgumentError(path.string() + ": KV transfer timeouts must be positive");
    }
  }
  std::stringstream rest;
  rest << root;
  auto base = ParseDeploymentConfig(rest.str(), path.parent_path());
  if (!base.ok()) return base.status().WithContext(path.string());
  config.base = std::move(base).value();
  return config;
}

}  // namespace tandem
