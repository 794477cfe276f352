// DeploymentConfig: what `tandem serve --config FILE.yaml` runs: the model, the backend, the engine
// settings and the server's address and limits. Parsed from YAML (configs/*.yaml); every key is
// optional and defaults as below; unknown keys are errors, so a typo never silently does nothing.
//
//   deployment: colocated          # the only mode so far; disaggregated comes with the router
//   log_level: info
//   model:   {path, name, backend, threads, device, gpu_memory_utilization, dummy_weights, dummy_seed}
//   engine:  {block_size, num_kv_blocks, kv_cache_gib, max_num_batched_tokens, max_num_seqs,
//             max_model_len, enable_prefix_caching, enable_chunked_prefill, enable_cuda_graphs,
//             scheduling_policy, seed}
//   server:  {listen, max_live_requests, max_threads, shutdown_grace_s, poll_interval_ms}
//
// A relative model.path is resolved against the directory of the config file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "tandem/status.h"
#include "worker/engine.h"

namespace tandem {

struct ModelSection {
  std::string path;   // HF model dir, .gguf file, or config.json (with dummy_weights)
  std::string name;   // what clients name it; default: the last component of path
  std::string backend = "cpu";
  int threads = 0;    // CPU backend threads; 0 = all cores
  int device = 0;     // CUDA device ordinal
  double gpu_memory_utilization = 0.9;
  bool dummy_weights = false;
  uint64_t dummy_seed = 0;
};

struct ServerSection {
  std::string listen = "127.0.0.1:50051";  // host:port; port 0 picks a free one
  int32_t max_live_requests = 1024;        // beyond it Generate gets RESOURCE_EXHAUSTED
  int32_t max_threads = 1100;              // gRPC sync server threads
  double shutdown_grace_s = 10.0;          // SIGTERM: in-flight requests get this long to finish
  int32_t poll_interval_ms = 50;           // cancellation/deadline polling of open streams
};

struct DeploymentConfig {
  std::string deployment = "colocated";
  std::string log_level = "info";
  ModelSection model;
  EngineConfig engine;
  double kv_cache_gib = 0.5;  // engine KV cache size when engine.num_kv_blocks is 0
  ServerSection server;

  Status Validate() const;
};

// `base_dir` resolves a relative model.path. InvalidArgument names the offending key.
StatusOr<DeploymentConfig> ParseDeploymentConfig(std::string_view yaml_text,
                                                 const std::filesystem::path& base_dir);
// NotFound when the file cannot be read.
StatusOr<DeploymentConfig> LoadDeploymentConfig(const std::filesystem::path& path);

}  // namespace tandem
