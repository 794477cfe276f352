#include "common/config_yaml.h"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <set>
#include <sstream>

namespace tandem {
namespace {

// Reads the keys of one YAML mapping into typed fields; remembers the first error. yaml-cpp
// reports bad conversions by exception: they are caught here and become Statuses.
class SectionReader {
 public:
  SectionReader(const YAML::Node& node, std::string prefix, Status* error)
      : node_(node), prefix_(std::move(prefix)), error_(error) {
    if (!node_ || node_.IsNull()) return;
    if (!node_.IsMap()) Fail(prefix_.empty() ? "the config must be a YAML mapping"
                                             : prefix_ + " must be a mapping");
  }

  template <typename T>
  void Get(const std::string& key, T* out) {
    known_.insert(key);
    if (!error_->ok() || !node_ || !node_.IsMap()) return;
    const YAML::Node value = node_[key];
    if (!value || value.IsNull()) return;
    try {
      if (!value.IsScalar()) throw YAML::Exception(value.Mark(), "not a scalar");
      *out = value.as<T>();
    } catch (const YAML::Exception&) {
      Fail(Path(key) + " has a value of the wrong type ('" + Dump(value) + "')");
    }
  }

  YAML::Node Child(const std::string& key) {
    known_.insert(key);
    if (!node_ || !node_.IsMap()) return YAML::Node();
    return node_[key];
  }

  // Unknown keys are errors: a misspelt setting must not silently keep its default.
  void Finish() {
    if (!error_->ok() || !node_ || !node_.IsMap()) return;
    for (const auto& entry : node_) {
      const std::string key = entry.first.as<std::string>();
      if (known_.count(key) == 0) {
        std::string names;
        for (const std::string& k : known_) names += (names.empty() ? "" : ", ") + k;
        Fail("unknown key '" + Path(key) + "'; known keys here: " + names);
        return;
      }
    }
  }

 private:
  std::string Path(const std::string& key) const { return prefix_.empty() ? key : prefix_ + "." + key; }
  static std::string Dump(const YAML::Node& node) {
    std::stringstream ss;
    ss << node;
    return ss.str();
  }
  void Fail(std::string message) {
    if (error_->ok()) *error_ = InvalidArgumentError(std::move(message));
  }

  YAML::Node node_;
  std::string prefix_;
  Status* error_;
  std::set<std::string> known_;
};

}  // namespace

Status DeploymentConfig::Validate() const {
  if (deployment != "colocated") {
    return deployment == "disaggregated"
               ? UnimplementedError("deployment 'disaggregated' is not implemented yet; use "
                                    "'colocated'")
               : InvalidArgumentError("deployment must be 'colocated', got '" + deployment + "'");
  }
  if (model.path.empty()) return InvalidArgumentError("model.path is not set (or pass --model)");
  if (kv_cache_gib <= 0 && engine.num_kv_blocks == 0) {
    return InvalidArgumentError("engine.kv_cache_gib must be positive when engine.num_kv_blocks is 0");
  }
  if (server.listen.find(':') == std::string::npos) {
    return InvalidArgumentError("server.listen must be host:port, got '" + server.listen + "'");
  }
  if (server.max_live_requests < 0) return InvalidArgumentError("server.max_live_requests must be >= 0");
  if (server.max_threads < 0) return InvalidArgumentError("server.max_threads must be >= 0");
  if (!(server.shutdown_grace_s >= 0)) return InvalidArgumentError("server.shutdown_grace_s must be >= 0");
  if (server.poll_interval_ms < 1 || server.poll_interval_ms > 1000) {
    return InvalidArgumentError("server.poll_interval_ms must be in [1, 1000], got " +
                                std::to_string(server.poll_interval_ms));
  }
  return engine.Validate();
}

StatusOr<DeploymentConfig> ParseDeploymentConfig(std::string_view yaml_text,
                                                 const std::filesystem::path& base_dir) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(std::string("config is not valid YAML: ") + e.what());
  }
  DeploymentConfig config;
  Status error;
  SectionReader top(root, "", &error);
  top.Get("deployment", &config.deployment);
  top.Get("log_level", &config.log_level);

  SectionReader model(top.Child("model"), "model", &error);
  ModelSection& m = config.model;
  model.Get("path", &m.path);
  model.Get("name", &m.name);
  model.Get("backend", &m.backend);
  model.Get("threads", &m.threads);
  model.Get("device", &m.device);
  model.Get("gpu_memory_utilization", &m.gpu_memory_utilization);
  model.Get("dummy_weights", &m.dummy_weights);
  model.Get("dummy_seed", &m.dummy_seed);
  model.Finish();

  SectionReader engine(top.Child("engine"), "engine", &error);
  EngineConfig& e = config.engine;
  engine.Get("block_size", &e.block_size);
  engine.Get("num_kv_blocks", &e.num_kv_blocks);
  engine.Get("kv_cache_gib", &config.kv_cache_gib);
  engine.Get("max_num_batched_tokens", &e.max_num_batched_tokens);
  engine.Get("max_num_seqs", &e.max_num_seqs);
  engine.Get("max_model_len", &e.max_model_len);
  engine.Get("enable_prefix_caching", &e.enable_prefix_caching);
  engine.Get("enable_chunked_prefill", &e.enable_chunked_prefill);
  engine.Get("enable_cuda_graphs", &e.enable_cuda_graphs);
  engine.Get("scheduling_policy", &e.scheduling_policy);
  engine.Get("seed", &e.seed);
  engine.Finish();

  SectionReader server(top.Child("server"), "server", &error);
  ServerSection& s = config.server;
  server.Get("listen", &s.listen);
  server.Get("max_live_requests", &s.max_live_requests);
  server.Get("max_threads", &s.max_threads);
  server.Get("shutdown_grace_s", &s.shutdown_grace_s);
  server.Get("poll_interval_ms", &s.poll_interval_ms);
  server.Finish();
  top.Finish();
  if (!error.ok()) return error;

  if (!m.path.empty() && std::filesystem::path(m.path).is_relative()) {
    m.path = (base_dir / m.path).lexically_normal().string();
  }
  e.kv_cache_bytes = static_cast<int64_t>(config.kv_cache_gib * (1LL << 30));
  return config;
}

StatusOr<DeploymentConfig> LoadDeploymentConfig(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) return NotFoundError("cannot read config file " + path.string());
  std::stringstream text;
  text << in.rdbuf();
  auto config = ParseDeploymentConfig(text.str(), path.parent_path());
  if (!config.ok()) return config.status().WithContext(path.string());
  return config;
}

}  // namespace tandem
