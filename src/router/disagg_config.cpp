#include "router/disagg_config.h"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <set>
#include <tuple>
#include <sstream>

namespace tandem {
namespace {

// disaggregated.<key>: a list of engine-section overrides, one map per worker of the pool; each
// entry is merged into the engine section and parsed like it.
StatusOr<std::vector<DisaggSection::WorkerEngine>> ParseWorkerEngines(const YAML::Node& root,
                                                                      const YAML::Node& list,
                                                                      const std::string& key,
                                                                      int32_t pool_size,
                                                                      const std::filesystem::path& path) {
  std::vector<DisaggSection::WorkerEngine> engines;
  if (!list) return engines;
  const std::string where = path.string() + ": disaggregated." + key;
  if (!list.IsSequence()) {
    return InvalidArgumentError(where + " must be a list of engine overrides, one per worker");
  }
  if (static_cast<int64_t>(list.size()) > pool_size) {
    return InvalidArgumentError(where + " has " + std::to_string(list.size()) + " entries for " +
                                std::to_string(pool_size) + " workers");
  }
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string entry = where + "[" + std::to_string(i) + "]";
    if (!list[i].IsMap() && !list[i].IsNull()) return InvalidArgumentError(entry + " must be a map");
    YAML::Node merged = YAML::Clone(root);
    if (!merged["engine"] || !merged["engine"].IsMap()) merged["engine"] = YAML::Node(YAML::NodeType::Map);
    if (list[i].IsMap()) {
      for (const auto& kv : list[i]) merged["engine"][kv.first.as<std::string>()] = kv.second;
    }
    std::stringstream text;
    text << merged;
    auto parsed = ParseDeploymentConfig(text.str(), path.parent_path());
    if (!parsed.ok()) return parsed.status().WithContext(entry);
    if (Status valid = parsed->engine.Validate(); !valid.ok()) return valid.WithContext(entry);
    if (parsed->kv_cache_gib <= 0 && parsed->engine.num_kv_blocks == 0) {
      return InvalidArgumentError(entry + ": engine.kv_cache_gib must be positive when "
                                  "engine.num_kv_blocks is 0");
    }
    engines.push_back({parsed->engine, parsed->kv_cache_gib});
  }
  return engines;
}

}  // namespace

DeploymentConfig WorkerDeploymentConfig(const DisaggDeploymentConfig& config, EngineRole role,
                                        int32_t index) {
  DeploymentConfig out = config.base;
  const auto& engines = role == EngineRole::kPrefill ? config.disagg.prefill_engines
                                                     : config.disagg.decode_engines;
  if (index >= 0 && index < static_cast<int32_t>(engines.size())) {
    out.engine = engines[static_cast<size_t>(index)].engine;
    out.kv_cache_gib = engines[static_cast<size_t>(index)].kv_cache_gib;
  }
  return out;
}

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
    const std::set<std::string> routing_keys = {"stats_interval_ms", "prefill_engine", "decode_engine"};
    const std::set<std::string> known = {"prefill_workers", "decode_workers", "worker_host",
                                         "kv_transport", "kv_connect_timeout_ms", "kv_io_timeout_ms",
                                         "worker_start_timeout_s", "restart_workers",
                                         "restart_backoff_s", "restart_backoff_max_s",
                                         "kv_staging_mib", "prefill_devices", "decode_devices"};
    try {
      for (const auto& kv : section) {
        const std::string key = kv.first.as<std::string>();
        if (known.count(key) == 0 && routing_keys.count(key) == 0) {
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
      if (section["stats_interval_ms"]) d.stats_interval_ms = section["stats_interval_ms"].as<int32_t>();
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
    if (d.stats_interval_ms < 1) {
      return InvalidArgumentError(path.string() + ": disaggregated.stats_interval_ms must be positive");
    }
    for (const auto& [key, pool_size, engines] :
         {std::tuple("prefill_engine", d.prefill_workers, &d.prefill_engines),
          std::tuple("decode_engine", d.decode_workers, &d.decode_engines)}) {
      auto parsed = ParseWorkerEngines(root, section[key], key, pool_size, path);
      if (!parsed.ok()) return parsed.status();
      *engines = std::move(parsed).value();
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
