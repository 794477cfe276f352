#include "worker/engine_loop.h"

#include <algorithm>
#include <utility>

#include <spdlog/spdlog.h>

#include "tandem/check.h"

namespace tandem {
namespace {

// True when the engine's only objection to `request` can be its KV footprint: every check that
// Engine::AddRequest makes before the capacity check passes (see engine.cpp).
bool OnlyTooLargeForCache(const Request& request, const EngineLoopInfo& info) {
  if (request.request_id.empty() || request.prompt_token_ids.empty()) return false;
  for (TokenId id : request.prompt_token_ids) {
    if (id < 0 || id >= info.vocab_size) return false;
  }
  const auto prompt_len = static_cast<int64_t>(request.prompt_token_ids.size());
  if (prompt_len >= info.max_model_len) return false;
  if (!request.sampling.Validate(info.vocab_size).ok()) return false;
  const int64_t longest = std::min<int64_t>(prompt_len + request.sampling.max_tokens, info.max_model_len);
  const int64_t blocks = (longest + info.block_size - 1) / info.block_size;
  return blocks > info.num_kv_blocks;
}

}  // namespace

EngineLoop::EngineLoop(std::unique_ptr<Engine> engine, EngineLoopConfig config)
    : config_(config), engine_(std::move(engine)) {
  TANDEM_CHECK(engine_ != nullptr);
  TANDEM_CHECK(!engine_->HasUnfinished());
  const EngineStats stats = engine_->Stats();
  info_.vocab_size = engine_->model_config().vocab_size;
  info_.max_model_len = engine_->max_model_len();
  info_.block_size = engine_->config().block_size;
  info_.num_kv_blocks = stats.blocks.num_total;
  info_.eos_token_ids = engine_->model_config().eos_token_ids;
  info_.role = engine_->config().role;
  info_.kv_geometry = engine_->kv_geometry();
  stats_.engine = stats;
  shutdown_result_ = shutdown_promise_.get_future().share();
  thread_ = std::thread([this] { Run(); });
}

EngineLoop::~EngineLoop() { (void)Shutdown(Clock::now()); }

Status EngineLoop::Enqueue(Command command, bool wait) {
  std::future<Status> verdict;
  if (wait) verdict = command.verdict.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!accepting_ && (command.kind == Command::Kind::kSubmit ||
                        command.kind == Command::Kind::kSubmitTransferred)) {
      return UnavailableError("the server is shutting down and accepts no new requests; retry on "
                              "another replica");
    }
    if (exited_) return UnavailableError("the engine has stopped");
    commands_.push_back(std::move(command));
  }
  wake_.notify_one();
  return wait ? verdict.get() : OkStatus();
}

Status EngineLoop::Submit(Request request, OutputCallback on_output, KvHandoffCallback on_kv) {
  if (!on_output) return InvalidArgumentError("Submit needs an output callback");
  Command command;
  command.kind = Command::Kind::kSubmit;
  command.request = std::move(request);
  command.on_output = std::move(on_output);
  command.on_kv = std::move(on_kv);
  return Enqueue(std::move(command), /*wait=*/true);
}

Status EngineLoop::SubmitTransferred(Request request, OutputCallback on_output) {
  if (!on_output) return InvalidArgumentError("SubmitTransferred needs an output callback");
  Command command;
  command.kind = Command::Kind::kSubmitTransferred;
  command.request = std::move(request);
  command.on_output = std::move(on_output);
  return Enqueue(std::move(command), /*wait=*/true);
}

Status EngineLoop::CompleteTransfer(KvHandoff handoff) {
  Command command;
  command.kind = Command::Kind::kCompleteTransfer;
  command.handoff = std::move(handoff);
  return Enqueue(std::move(command), /*wait=*/true);
}

void EngineLoop::FailTransfer(const std::string& request_id, Status error) {
  Command command;
  command.kind = Command::Kind::kCancel;
  command.request_id = request_id;
  command.error = error.ok() ? InternalError("KV transfer failed") : std::move(error);
  (void)Enqueue(std::move(command), /*wait=*/false);
}

void EngineLoop::Cancel(const std::string& request_id) {
  Command command;
  command.kind = Command::Kind::kCancel;
  command.request_id = request_id;
  (void)Enqueue(std::move(command), /*wait=*/false);
}

EngineLoopStats EngineLoop::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

Status EngineLoop::Shutdown(Clock::time_point deadline) {
  std::shared_future<Status> result;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stop_requested_) {
      stop_requested_ = true;
      accepting_ = false;
      stats_.accepting = false;
      drain_deadline_ = deadline;
    }
    result = shutdown_result_;
  }
  wake_.notify_one();
  {
    std::lock_guard<std::mutex> lock(join_mu_);
    if (thread_.joinable()) thread_.join();
  }
  return result.get();
}

// --- engine thread --------------------------------------------------------------------------------

void EngineLoop::Run() {
  int64_t num_aborted_at_deadline = 0;
  for (;;) {
    std::deque<Command> batch;
    bool stop = false;
    Clock::time_point deadline;
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Idle: sleep until a command or a shutdown arrives. Busy (live requests): no wait.
      wake_.wait(lock, [&] {
        return !commands_.empty() || stop_requested_ || engine_->HasStepWork();
      });
      batch.swap(commands_);
      stop = stop_requested_;
      deadline = drain_deadline_;
    }
    for (Command& command : batch) RunCommand(command);
    if (stop && !callbacks_.empty() && Clock::now() >= deadline) {
      num_aborted_at_deadline += static_cast<int64_t>(callbacks_.size());
      spdlog::warn("engine loop: shutdown deadline reached; aborting {} live requests",
                   callbacks_.size());
      AbortAll();
    }
    if (engine_->HasStepWork()) {
      const bool prefill_pending = !prefilling_.empty();
      const Clock::time_point step_start = Clock::now();
      auto outputs = engine_->Step();
      if (outputs.ok()) {
        Deliver(*outputs);
        HandOffKv();
      } else {
        FailAll(outputs.status());
      }
      if (prefill_pending) {
        prefill_seconds_ += std::chrono::duration<double>(Clock::now() - step_start).count();
      }
      if (prefilled_tokens_ > 0 && prefill_seconds_ > 0) {
        rate_tokens_ = kPrefillRateDecay * rate_tokens_ + static_cast<double>(prefilled_tokens_);
        rate_seconds_ = kPrefillRateDecay * rate_seconds_ + prefill_seconds_;
        prefilled_tokens_ = 0;
        prefill_seconds_ = 0;
      }
    }
    PublishStats();
    if (stop && !engine_->HasUnfinished() && callbacks_.empty()) {
      std::lock_guard<std::mutex> lock(mu_);
      // Submits were refused since stop_requested_ was set, so only Cancels can be left: moot.
      const bool submits_left =
          std::any_of(commands_.begin(), commands_.end(), [](const Command& c) {
            return c.kind == Command::Kind::kSubmit || c.kind == Command::Kind::kSubmitTransferred;
          });
      if (!submits_left) {
        // Whoever waits on a verdict (a late CompleteTransfer) hears that the engine stopped.
        exited_ = true;
        for (Command& c : commands_) {
          if (c.kind == Command::Kind::kCompleteTransfer) {
            c.verdict.set_value(UnavailableError("the engine has stopped"));
          }
        }
        commands_.clear();
        break;
      }
    }
  }
  shutdown_promise_.set_value(
      num_aborted_at_deadline == 0
          ? OkStatus()
          : DeadlineExceededError("shutdown deadline passed with " +
                                  std::to_string(num_aborted_at_deadline) +
                                  " requests in flight; they were aborted"));
}

void EngineLoop::RunCommand(Command& command) {
  switch (command.kind) {
    case Command::Kind::kSubmit:
    case Command::Kind::kSubmitTransferred: {
      std::string id = command.request.request_id;
      const bool transferred = command.kind == Command::Kind::kSubmitTransferred;
      const auto prompt_len = static_cast<int32_t>(command.request.prompt_token_ids.size());
      Status status = Admit(std::move(command.request), transferred);
      if (status.ok()) {
        if (transferred) {
          // What Engine::AddTransferredRequest reserves: the prompt and the first token.
          const int32_t blocks = (prompt_len + 1 + info_.block_size - 1) / info_.block_size;
          reserved_blocks_.emplace(id, blocks);
          num_reserved_kv_blocks_ += blocks;
        } else {
          prefilling_.emplace(id, prompt_len);
          num_queued_prompt_tokens_ += prompt_len;
        }
        if (command.on_kv) kv_callbacks_.emplace(id, std::move(command.on_kv));
        callbacks_.emplace(std::move(id), std::move(command.on_output));
      }
      command.verdict.set_value(std::move(status));
      break;
    }
    case Command::Kind::kCompleteTransfer: {
      const std::string id = command.handoff.request_id;
      if (auto r = reserved_blocks_.find(id); r != reserved_blocks_.end()) {
        num_reserved_kv_blocks_ -= r->second;  // written now, or freed by the abort below
        reserved_blocks_.erase(r);
      }
      Status status = engine_->CompleteTransfer(command.handoff);
      // A failed write ends the request (reservation freed); the sender hears why.
      if (!status.ok()) (void)engine_->Abort(id, status);
      command.verdict.set_value(std::move(status));
      break;
    }
    case Command::Kind::kCancel:
      // False when the request already finished (its final output is out or on its way).
      (void)engine_->Abort(command.request_id, command.error);
      break;
  }
}

void EngineLoop::HandOffKv() {
  std::vector<RequestOutput> finals;
  for (const std::string& id : engine_->TakeTransferReady()) {
    auto kv = kv_callbacks_.find(id);
    if (kv != kv_callbacks_.end()) {
      kv->second(engine_->ReadKvForTransfer(id));
      kv_callbacks_.erase(kv);
    }
    auto released = engine_->ReleaseTransferred(id);
    TANDEM_CHECK(released.ok()) << released.status().ToString();
    finals.push_back(std::move(released).value());
  }
  Deliver(finals);
}

Status EngineLoop::Admit(Request request, bool transferred) {
  // The engine forgets an aborted request at once, but its final output is delivered after this
  // batch of commands: until then the id is still live here.
  if (callbacks_.count(request.request_id) != 0) {
    return AlreadyExistsError("request_id '" + request.request_id + "' is already in flight");
  }
  if (config_.max_live_requests > 0 &&
      callbacks_.size() >= static_cast<size_t>(config_.max_live_requests)) {
    return ResourceExhaustedError(std::to_string(callbacks_.size()) +
                                  " requests are in flight, the server's limit "
                                  "(max_live_requests); retry later");
  }
  const bool too_large = OnlyTooLargeForCache(request, info_);
  Status status = transferred ? engine_->AddTransferredRequest(std::move(request))
                              : engine_->AddRequest(std::move(request));
  if (!status.ok() && too_large && status.code() == StatusCode::kInvalidArgument) {
    // The request is well-formed; it just can never fit this worker's KV cache.
    return ResourceExhaustedError(status.message());
  }
  return status;
}

void EngineLoop::Deliver(std::vector<RequestOutput>& outputs) {
  for (RequestOutput& out : outputs) {
    auto it = callbacks_.find(out.request_id);
    TANDEM_CHECK(it != callbacks_.end()) << "engine output for unknown request " << out.request_id;
    const bool finished = out.finished;
    const std::string id = out.request_id;
    NoteDelivered(out);
    it->second(std::move(out));
    if (finished) {
      callbacks_.erase(it);
      kv_callbacks_.erase(id);
    }
  }
}

void EngineLoop::NoteDelivered(const RequestOutput& out) {
  if (out.finished) {
    if (auto r = reserved_blocks_.find(out.request_id); r != reserved_blocks_.end()) {
      num_reserved_kv_blocks_ -= r->second;
      reserved_blocks_.erase(r);
    }
  }
  if (!out.finished && out.new_tokens.empty()) return;
  auto p = prefilling_.find(out.request_id);
  if (p == prefilling_.end()) return;
  num_queued_prompt_tokens_ -= p->second;
  prefilling_.erase(p);
  // A first token means the prompt was computed (less its cached prefix); an end without one
  // (abort, error) computed nothing worth measuring.
  if (!out.new_tokens.empty()) prefilled_tokens_ += out.num_prompt_tokens - out.num_cached_tokens;
}

void EngineLoop::AbortAll() {
  std::vector<RequestOutput> orphans;
  for (const auto& [id, callback] : callbacks_) {
    if (!engine_->Abort(id)) {
      // The engine already emitted this request's final output in an earlier step: an invariant
      // break, but the callback still owes its owner a final output.
      RequestOutput out;
      out.request_id = id;
      out.finished = true;
      out.finish_reason = FinishReason::kAbort;
      orphans.push_back(std::move(out));
    }
  }
  Deliver(orphans);
}

void EngineLoop::FailAll(const Status& status) {
  spdlog::error("engine loop: step failed: {}; failing {} live requests", status.ToString(),
                callbacks_.size());
  const Status error = InternalError("the engine failed while running this request: " +
                                     status.ToString());
  AbortAll();
  auto finals = engine_->Step();  // nothing is live: returns the aborts' final outputs
  std::vector<RequestOutput> outputs;
  if (finals.ok()) outputs = std::move(finals).value();
  for (const auto& [id, callback] : callbacks_) {
    const bool has_final = std::any_of(outputs.begin(), outputs.end(),
                                       [&](const RequestOutput& o) { return o.request_id == id; });
    if (!has_final) {
      RequestOutput out;
      out.request_id = id;
      out.finished = true;
      outputs.push_back(std::move(out));
    }
  }
  for (RequestOutput& out : outputs) {
    out.finish_reason = FinishReason::kError;
    out.status = error;
  }
  Deliver(outputs);
}

void EngineLoop::PublishStats() {
  EngineStats stats = engine_->Stats();
  std::lock_guard<std::mutex> lock(mu_);
  stats_.engine = stats;
  stats_.num_live = static_cast<int32_t>(callbacks_.size());
  stats_.accepting = accepting_;
  stats_.num_queued_prompt_tokens = num_queued_prompt_tokens_;
  stats_.prefill_tokens_per_s = rate_seconds_ > 0 ? rate_tokens_ / rate_seconds_ : 0;
  stats_.num_reserved_kv_blocks = num_reserved_kv_blocks_;
}

}  // namespace tandem
