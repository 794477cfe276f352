// EngineLoop: owns an Engine and the one thread that drives it; the only way other threads reach
// an engine.
//
// Threads and ownership:
//   - The engine thread owns the Engine, every live request's OutputCallback and the order of
//     events. It sleeps on a condition variable while there is no work (no busy loop).
//   - Any other thread calls Submit / Cancel / Stats / Shutdown. They never touch the Engine: they
//     append commands to a queue that the engine thread drains before each step. Submit waits for
//     the engine thread's verdict (Engine::AddRequest's Status) through a promise, so validation
//     errors come back synchronously while the Engine stays single-threaded.
//
// A request's lifecycle:
//   Submit -> (engine thread) AddRequest -> OK: the callback is registered, Submit returns OK
//          -> each step: callback(output with new tokens) ... callback(final output)
//   Every accepted request gets exactly one final output (finished = true): stop, length, abort
//   (Cancel, or Shutdown's deadline) or error (the engine failed; status says why). After it the
//   callback is destroyed on the engine thread. A rejected Submit never calls its callback.
//
// Callbacks run on the engine thread between steps: they must be quick and must not block or call
// back into the EngineLoop synchronously (Submit/Shutdown would deadlock; Cancel/Stats are safe).
//
// Disaggregation (Engine roles): on a prefill worker, a request submitted with a KvHandoffCallback
// gets, after its output with the first token, the callback with its KV copied to host memory
// (called on the engine thread, must not block), then a final output with FinishReason::kNone
// ("handed off"); its blocks are freed before the next step. On a decode worker,
// SubmitTransferred reserves the blocks for a request whose KV is on its way, CompleteTransfer
// (from the transport's thread) writes it and starts decoding, FailTransfer ends it with an error
// and frees the reservation.
//
// Load (EngineLoopStats, kept by the engine thread from what passes through it; the engine is not
// asked): num_queued_prompt_tokens sums the prompts of submitted requests that have not produced
// their first token (a prompt counts whole, cached prefix included, until then);
// prefill_tokens_per_s is uncached prompt tokens per second of engine-thread time spent stepping
// (and handing off KV) while a prefill was pending, weighted over recent prefills
// (kPrefillRateDecay per finished prefill); num_reserved_kv_blocks counts the blocks reserved by
// SubmitTransferred requests whose KV has not arrived.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include "tandem/request.h"
#include "tandem/status.h"
#include "worker/engine.h"

namespace tandem {

// Called on the engine thread with each output of one request. Must not block.
using OutputCallback = std::function<void(RequestOutput)>;
// Called on the engine thread with a prefill worker's KV of one request (or why it could not be
// read). Must not block.
using KvHandoffCallback = std::function<void(StatusOr<KvHandoff>)>;

struct EngineLoopConfig {
  // Accepted requests not yet finished; Submit beyond it is ResourceExhausted. 0: unlimited.
  int32_t max_live_requests = 1024;
};

// What the engine looked like after its latest step or command.
struct EngineLoopStats {
  EngineStats engine;       // waiting/running counts and KV block stats
  int32_t num_live = 0;     // accepted, final output not yet delivered
  bool accepting = true;    // false once Shutdown began
  // Load, for a router (see "Load" below).
  int64_t num_queued_prompt_tokens = 0;
  double prefill_tokens_per_s = 0;  // 0 until the first prefill finished
  int32_t num_reserved_kv_blocks = 0;
};

// Facts about the served model, constant after construction (readable from any thread).
struct EngineLoopInfo {
  int64_t vocab_size = 0;
  int64_t max_model_len = 0;
  int32_t block_size = 0;
  int32_t num_kv_blocks = 0;
  std::vector<int64_t> eos_token_ids;
  EngineRole role = EngineRole::kColocated;
  KvGeometry kv_geometry;
};

class EngineLoop {
 public:
  // Takes ownership of the engine (which must have no requests) and starts the engine thread.
  explicit EngineLoop(std::unique_ptr<Engine> engine, EngineLoopConfig config = {});
  // Shutdown(now) if it did not run yet: live requests are aborted.
  ~EngineLoop();

  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  // Hands the request to the engine thread and waits for its verdict. OK: the callback will get
  // the request's outputs, ending with a final one. Errors (nothing is called): InvalidArgument
  // (bad ids or parameters), AlreadyExists (a live request has this id), ResourceExhausted (too
  // many live requests, or the request can never fit in the KV cache), Unavailable (shutting down).
  Status Submit(Request request, OutputCallback on_output, KvHandoffCallback on_kv = nullptr);

  // Decode role. SubmitTransferred: as Submit, but the request's prompt KV comes from a prefill
  // worker: blocks are reserved now (ResourceExhausted when they are not free) and the request
  // waits for CompleteTransfer. CompleteTransfer waits for the engine thread's verdict; on an
  // error the request ends with that error (reservation freed). FailTransfer ends a waiting
  // request with `error` (reservation freed); unknown ids are ignored.
  Status SubmitTransferred(Request request, OutputCallback on_output);
  Status CompleteTransfer(KvHandoff handoff);
  void FailTransfer(const std::string& request_id, Status error);

  // Aborts a live request, wherever it is; its KV blocks are freed before the engine's next step
  // and its callback gets a final kAbort output. Unknown or finished ids are ignored. Never blocks
  // on a step.
  void Cancel(const std::string& request_id);

  // A snapshot published by the engine thread after every step and command; never blocks on a step.
  EngineLoopStats Stats() const;

  const EngineLoopInfo& info() const { return info_; }

  // Stops accepting (Submit returns Unavailable), lets live requests finish until `deadline`,
  // aborts those still live then, delivers their final outputs and joins the engine thread.
  // Returns OK if everything finished by itself, DeadlineExceeded naming how many were aborted.
  // Idempotent: later calls return the first call's result once it is known.
  Status Shutdown(Clock::time_point deadline);

 private:
  struct Command {
    enum class Kind { kSubmit, kSubmitTransferred, kCompleteTransfer, kCancel };
    Kind kind = Kind::kSubmit;
    Request request;                        // kSubmit*
    OutputCallback on_output;               // kSubmit*
    KvHandoffCallback on_kv;                // kSubmit (prefill role), optional
    std::promise<Status> verdict;           // kSubmit*, kCompleteTransfer
    KvHandoff handoff;                      // kCompleteTransfer
    std::string request_id;                 // kCancel
    Status error;                           // kCancel: not OK ends the request with this error
  };

  Status Enqueue(Command command, bool wait);  // wait: returns the verdict

  void Run();                                // the engine thread
  void RunCommand(Command& command);
  Status Admit(Request request, bool transferred);  // limits, then Engine::Add(Transferred)Request
  void HandOffKv();                          // prefill role: read, hand over and release
  void Deliver(std::vector<RequestOutput>& outputs);
  void FailAll(const Status& status);        // the engine failed a step: abort every live request
  void AbortAll();
  void PublishStats();
  // Load bookkeeping (engine thread): a request's first output ends its prefill.
  void NoteDelivered(const RequestOutput& out);

  // Weight of the previous prefill-rate estimate at each finished prefill.
  static constexpr double kPrefillRateDecay = 0.8;

  const EngineLoopConfig config_;  // Constant after construction
  EngineLoopInfo info_;            // Constant after construction

  // Engine-thread state: touched only by the engine thread once it started.
  std::unique_ptr<Engine> engine_;
  std::unordered_map<std::string, OutputCallback> callbacks_;  // live requests, by id
  std::unordered_map<std::string, KvHandoffCallback> kv_callbacks_;  // prefill role, by id
  std::unordered_map<std::string, int32_t> prefilling_;  // prompt tokens of requests before their first token
  int64_t num_queued_prompt_tokens_ = 0;                 // sum of prefilling_
  std::unordered_map<std::string, int32_t> reserved_blocks_;  // decode role: KV not yet here
  int32_t num_reserved_kv_blocks_ = 0;                   // sum of reserved_blocks_
  int64_t prefilled_tokens_ = 0;       // uncached prompt tokens finished since the last rate sample
  double prefill_seconds_ = 0;         // stepping time with a prefill pending, since then
  double rate_tokens_ = 0, rate_seconds_ = 0;  // decayed sums: the rate is their ratio

  mutable std::mutex mu_;
  std::condition_variable wake_;             // commands queued or shutdown requested
  std::deque<Command> commands_;             // GUARDED_BY(mu_)
  bool accepting_ = true;                    // GUARDED_BY(mu_)
  bool stop_requested_ = false;              // GUARDED_BY(mu_)
  bool exited_ = false;                      // GUARDED_BY(mu_): the engine thread is gone
  Clock::time_point drain_deadline_;         // GUARDED_BY(mu_)
  EngineLoopStats stats_;                    // GUARDED_BY(mu_)
  std::shared_future<Status> shutdown_result_;  // GUARDED_BY(mu_), valid once Shutdown began
  std::promise<Status> shutdown_promise_;    // set by the engine thread as it exits

  std::mutex join_mu_;                       // serializes joining the thread
  std::thread thread_;                       // last: starts after everything above exists
};

}  // namespace tandem
