// DisaggExecutor: the router's Executor over remote prefill and decode workers (the internal
// tandem.v1.Worker service), so the public tandem.v1.Generation service runs unchanged on top of
// a disaggregated deployment.
//
// One request (see proto/tandem/v1/worker.proto):
//   Submit: pick the decode worker with the most free KV blocks and the prefill worker with the
//           fewest requests in flight (from the router's own counts and stats polled every
//           stats_interval); Decode(request) reserves the KV blocks and names the KV endpoint;
//           Prefill(request, endpoint) admits it. Either refusal is Submit's error (a reservation
//           already made is cancelled).
//   then, on the request's own thread: the prefill stream's first token goes out (TTFT); once the
//           prefill worker reports the KV handed off, the decode stream's tokens follow, and its
//           final message becomes the request's final output (usage from decode, TTFT measured
//           here).
//   Cancel: cancels both worker calls; each worker aborts the request and frees its KV blocks.
//   A worker that dies ends its calls with UNAVAILABLE at once (its connection closes); the
//   request's final output carries that status and the other worker's call is cancelled.
//
// Worker health: a worker is *down* once a GetWorkerStats poll (every stats_interval, deadline
// stats_timeout) or an admission RPC fails with UNAVAILABLE or DEADLINE_EXCEEDED, and *up* again
// as soon as a poll answers (a supervisor restarted it on the same address). Submit picks only
// workers that are up; an admission that finds its worker gone marks it down and tries the next
// one (nothing was reserved); with no worker of a pool up, Submit fails UNAVAILABLE.
// Admission: past max_in_flight requests in flight Submit fails RESOURCE_EXHAUSTED.
//
// Threads: Submit runs on the caller's (gRPC) thread and blocks for the two admissions; each
// admitted request then gets one thread that reads its two streams and calls on_output (which
// must not block). A poller thread refreshes worker stats. Shutdown cancels everything and waits.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "router/executor.h"
#include "tandem/v1/worker.grpc.pb.h"

namespace tandem {

struct DisaggExecutorOptions {
  std::vector<std::string> prefill_workers;  // host:port of each worker's tandem.v1.Worker
  std::vector<std::string> decode_workers;
  std::chrono::milliseconds stats_interval{200};
  std::chrono::milliseconds stats_timeout{1000};  // a poll slower than this marks the worker down
  int32_t max_in_flight = 1024;                   // router-wide admission limit
  // How long Create waits for every worker to answer GetWorkerInfo.
  std::chrono::milliseconds connect_timeout{60000};
};

class DisaggExecutor final : public Executor {
 public:
  // Connects to every worker and checks roles and KV block sizes.
  static StatusOr<std::unique_ptr<DisaggExecutor>> Create(DisaggExecutorOptions options);
  ~DisaggExecutor() override;  // Shutdown()

  Status Submit(Request request, OutputCallback on_output) override;
  void Cancel(const std::string& request_id) override;
  // Sums of the workers' latest stats; num_live: requests this router has in flight.
  EngineLoopStats Stats() const override;

  // What the first decode worker reported (model, vocab, context).
  const v1::WorkerInfo& info() const { return info_; }

  // Refuses new requests, cancels live ones and waits for their threads. Idempotent.
  void Shutdown();

 private:
  struct Worker {
    std::string address;
    std::unique_ptr<v1::Worker::Stub> stub;
    std::atomic<int32_t> in_flight{0};
    std::atomic<bool> up{true};  // see "Worker health" above
  };
  struct Flight;

  DisaggExecutor() = default;
  void Run(std::shared_ptr<Flight> flight);  // the request's thread
  void PollStats();                          // the poller thread
  // The best worker that is up and not in `skip`, or SIZE_MAX when there is none.
  size_t PickDecode(const std::vector<bool>& skip);
  size_t PickPrefill(const std::vector<bool>& skip);
  // Logs a change of a worker's health.
  static void MarkDown(Worker& worker, const std::string& role, const std::string& why);
  static void MarkUp(Worker& worker, const std::string& role);
  // One admission attempt on the given pair: Decode reservation, then Prefill.
  Status Admit(const Request& request, Flight& flight);

  DisaggExecutorOptions options_;                    // Constant after Create
  v1::WorkerInfo info_;                              // Constant after Create
  std::vector<std::unique_ptr<Worker>> prefill_;     // Constant after Create (but in_flight)
  std::vector<std::unique_ptr<Worker>> decode_;      // Constant after Create (but in_flight)

  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::unordered_map<std::string, std::shared_ptr<Flight>> flights_;  // GUARDED_BY(mu_)
  int32_t num_threads_ = 0;                          // GUARDED_BY(mu_): request threads alive
  bool accepting_ = true;                            // GUARDED_BY(mu_)
  bool stopping_ = false;                            // GUARDED_BY(mu_)
  std::vector<v1::WorkerStats> prefill_stats_;       // GUARDED_BY(mu_)
  std::vector<v1::WorkerStats> decode_stats_;        // GUARDED_BY(mu_)
  std::mt19937_64 seed_rng_{std::random_device{}()}; // GUARDED_BY(mu_)
  size_t next_decode_ = 0;                           // GUARDED_BY(mu_): tie breaking
  std::thread poller_;
};

}  // namespace tandem
