// DisaggPair: 1 prefill + 1 decode engine in one process on two GPUs, joined by NcclKvTransport —
// what the two workers' WorkerService halves do, without gRPC — for the GPU tests and
// benchmarks/gpu/disagg_bench.cpp. Start() runs a request's decode reservation, route and prefill;
// Finish() waits for the KV verdict and the decode stream's end.
#pragma once

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "transfer/nccl/nccl_kv_transport.h"
#include "worker/engine_loop.h"

namespace tandem::gpu_testing {

class DisaggPair {
 public:
  // Takes a prefill-role engine on one device and a decode-role engine on another (CUDA backends).
  static StatusOr<std::unique_ptr<DisaggPair>> Create(std::unique_ptr<Engine> prefill,
                                                      std::unique_ptr<Engine> decode,
                                                      NcclKvTransportOptions options);
  ~DisaggPair();

  struct Run {
    std::string id;
    Clock::time_point submitted, first_token, handed_off, second_token;
    std::vector<TokenId> tokens;  // the prefill's first token, then the decode worker's
    Status status;
    std::promise<StatusOr<KvHandoff>> kv;
    std::promise<void> done;
    std::mutex mu;
  };

  // Reserves on the decode engine, routes the request, submits the prefill.
  StatusOr<std::shared_ptr<Run>> Start(Request request);
  // Waits for the KV verdict (cancelling the decode side if it failed) and the decode's end.
  Status Finish(Run& run);

  // Delays the receiver's completion (a decode worker that hangs), for the failure tests.
  void set_complete_delay(std::chrono::milliseconds d) { complete_delay_ms_.store(d.count()); }

  EngineLoop& prefill() { return *prefill_; }
  EngineLoop& decode() { return *decode_; }
  NcclKvTransport& sender() { return *sender_; }
  NcclKvTransport& receiver() { return *receiver_; }
  const std::string& endpoint() const { return endpoint_; }

 private:
  DisaggPair() = default;

  std::unique_ptr<NcclKvTransport> receiver_, sender_;
  std::unique_ptr<EngineLoop> decode_, prefill_;
  std::string endpoint_;
  std::atomic<int64_t> complete_delay_ms_{0};
  std::mutex mu_;
  std::set<std::string> reserved_;  // GUARDED_BY(mu_)
};

}  // namespace tandem::gpu_testing
