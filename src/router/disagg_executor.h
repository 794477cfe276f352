// DisaggExecutor: the router's Executor over remote prefill and decode workers (the internal
// tandem.v1.Worker service), so the public tandem.v1.Generation service runs unchanged on top of
// a disaggregated deployment.
//
// One request (see proto/tandem/v1/worker.proto):
//   Submit: rank both pools (router/worker_picker.h: decode by KV fit then batch load, prefill by
//           predicted time to first token with prefix-cache affinity) from the stats polled every
//           stats_interval plus this router's own admissions since; Decode(request) on the first
//           decode worker in that order reserves the KV blocks and names the KV endpoint (a
//           RESOURCE_EXHAUSTED refusal moves on to the next decode worker; only when every one
//           refused does Submit fail RESOURCE_EXHAUSTED, naming how many were tried); then
//           Prefill(request, endpoint) on the best prefill worker (likewise moving on past a
//           refusal). Any other refusal is Submit's error (a reservation already made is cancelled).
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
// as soon as a poll answers (a supervisor restarted it on the same address; a prefill worker's
// affinity memory is dropped when it goes down, as its cache is). Submit picks only workers that
// are up; an admission that finds its worker gone marks it down and tries the next one (nothing
// was reserved); with no worker of a pool up, Submit fails UNAVAILABLE.
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
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "router/executor.h"
#include "router/worker_load_view.h"
#include "router/worker_picker.h"
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
  PrefillPolicyOptions prefill_policy;
  // Prefix-affinity memory per prefill worker, in KV blocks; 0: the size of the worker's KV pool.
  int32_t affinity_blocks = 0;
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
    // The router's view, GUARDED_BY(DisaggExecutor::mu_):
    v1::WorkerStats stats;                     // latest poll's answer
    WorkerLoadView load;                       // that answer, corrected by this router's requests
    std::unique_ptr<PrefixAffinity> affinity;  // prefill workers
    uint64_t last_pick = 0;                    // num_picks_ when last picked
  };
  struct Flight;
  // Where one request may go, best first.
  struct Route {
    std::vector<size_t> decode_order;
    std::vector<size_t> prefill_order;
    std::vector<int64_t> uncached_tokens;  // per prefill worker
  };

  DisaggExecutor() = default;
  void Run(std::shared_ptr<Flight> flight);  // the request's thread
  void PollStats();                          // the poller thread
  // A snapshot of every worker's load, ranked by the policy (router/worker_picker.h).
  Route PlanRoute(std::span<const uint64_t> block_hashes, int64_t num_prompt_tokens,
                  const DecodeDemand& demand);
  enum class Role { kPrefill, kDecode };
  // One admission call: its context (first: the stream is destroyed before it) and stream.
  struct AdmissionCall {
    std::unique_ptr<grpc::ClientContext> context;
    std::unique_ptr<grpc::ClientReader<v1::WorkerOutput>> stream;
  };
  struct Admitted {
    size_t index;            // the worker in its pool
    v1::WorkerOutput first;  // its acceptance (a decode worker's carries the KV endpoint)
  };
  // Admission on one pool (decode: the KV reservation; prefill: the prompt), trying the workers in
  // `order` until one accepts: a refusal for room (RESOURCE_EXHAUSTED) or a worker gone moves on;
  // any other error ends the admission. OK leaves the accepted call in `call`.
  StatusOr<Admitted> Admit(Role role, const v1::WorkerRequest& proto, const std::vector<size_t>& order,
                           AdmissionCall& call);
  // Logs a change of a worker's health; a worker that goes down loses its load view (and a prefill
  // worker its affinity memory): back, it is a new process.
  void MarkDown(Worker& worker, const std::string& role, const std::string& why);
  // The request with this admission id left the worker's queue (prefill: its prefill ended;
  // decode: it ended); see WorkerLoadView.
  void Retire(Worker& worker, uint64_t admission_id);
  static void MarkUp(Worker& worker, const std::string& role);

  DisaggExecutorOptions options_;                    // Constant after Create
  v1::WorkerInfo info_;                              // Constant after Create
  int32_t block_size_ = 0;                           // Constant after Create
  std::vector<std::unique_ptr<Worker>> prefill_;     // Constant after Create (but see Worker)
  std::vector<std::unique_ptr<Worker>> decode_;      // Constant after Create (but see Worker)

  mutable std::mutex mu_;
  std::condition_variable changed_;
  // GUARDED_BY(mu_). By request id; null while the request is being admitted (the id is taken).
  std::unordered_map<std::string, std::shared_ptr<Flight>> flights_;
  int32_t num_threads_ = 0;                          // GUARDED_BY(mu_): request threads alive
  std::atomic<uint64_t> next_worker_seq_{0};          // numbers the workers' request ids
  bool accepting_ = true;                            // GUARDED_BY(mu_)
  bool stopping_ = false;                            // GUARDED_BY(mu_)
  std::mt19937_64 seed_rng_{std::random_device{}()}; // GUARDED_BY(mu_)
  uint64_t poll_round_ = 0;                          // GUARDED_BY(mu_): stats polls begun
  uint64_t num_picks_ = 0;                           // GUARDED_BY(mu_): admissions (tie breaking)
  std::thread poller_;
};

}  // namespace tandem
