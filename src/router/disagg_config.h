// DisaggDeploymentConfig: a deployment config (common/config_yaml.h) plus the `disaggregated`
// section that `tandem serve`, `tandem worker` and `tandem router` read from
// configs/cpu-disagg.yaml:
//
//   deployment: disaggregated        # or colocated (then the section must be absent)
//   disaggregated:
//     prefill_workers: 1             # worker processes `tandem serve` starts
//     decode_workers: 1
//     worker_host: 127.0.0.1         # workers' gRPC and KV endpoints (ports picked at start)
//     kv_transport: tcp              # tcp (any backend, through host memory) or nccl (CUDA
//                                    # workers: GPU to GPU, streamed while the prefill runs)
//     kv_staging_mib: 1024           # nccl: device staging per worker for transfers in flight
//     prefill_devices: [0]           # CUDA device of each prefill / decode worker `tandem serve`
//     decode_devices: [1]            # starts (default: model.device for all)
//     kv_connect_timeout_ms: 2000
//     kv_io_timeout_ms: 5000         # longest wait for any KV read/write to progress
//     worker_start_timeout_s: 120
//     restart_workers: true          # tandem serve restarts a worker that died, on its address,
//     restart_backoff_s: 0.5         # after this delay, doubled for each restart in a row
//     restart_backoff_max_s: 10      # up to this (a worker that ran 60 s resets the delay)
//     stats_interval_ms: 200         # the router polls every worker's load this often (heartbeat)
//     decode_engine:                 # optional, per worker (by index): engine keys that differ
//       - {num_kv_blocks: 64}        #   decode worker 0 gets its own KV pool size
//     prefill_engine: []             # the same for prefill workers
//
// The rest of the file (model, engine, server) means what it means for colocated serving; server
// is the router's public endpoint; every worker runs the engine section, with its overrides.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "common/config_yaml.h"
#include "tandem/status.h"

namespace tandem {

struct DisaggSection {
  int32_t prefill_workers = 1;
  int32_t decode_workers = 1;
  std::string worker_host = "127.0.0.1";
  std::string kv_transport = "tcp";
  int32_t kv_connect_timeout_ms = 2000;
  int32_t kv_io_timeout_ms = 5000;
  int32_t kv_staging_mib = 1024;
  std::vector<int32_t> prefill_devices;  // empty: model.device
  std::vector<int32_t> decode_devices;
  double worker_start_timeout_s = 120;
  bool restart_workers = true;
  double restart_backoff_s = 0.5;
  double restart_backoff_max_s = 10;
  int32_t stats_interval_ms = 200;
  // Per worker, by index (shorter than the pool: the rest run the engine section as it is): the
  // engine section with that worker's overrides applied, validated.
  struct WorkerEngine {
    EngineConfig engine;
    double kv_cache_gib = 0;
  };
  std::vector<WorkerEngine> prefill_engines;
  std::vector<WorkerEngine> decode_engines;
};

struct DisaggDeploymentConfig {
  DeploymentConfig base;       // base.deployment is "colocated" so base.Validate() applies
  bool disaggregated = false;  // the file said deployment: disaggregated
  DisaggSection disagg;
};

// InvalidArgument names the offending key; NotFound when the file cannot be read.
StatusOr<DisaggDeploymentConfig> LoadDisaggDeploymentConfig(const std::filesystem::path& path);

// What worker `index` of the `role` pool runs: config.base with that worker's engine overrides.
DeploymentConfig WorkerDeploymentConfig(const DisaggDeploymentConfig& config, EngineRole role,
                                        int32_t index);

}  // namespace tandem
