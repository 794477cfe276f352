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
  stats_.engine = stats;
  shutdown_result_ = shutdown_promise_.get_future().share();
  thread_ = std::thread([this] { Run(); });
}

EngineLoop::~EngineLoop() { (void)Shutdown(Clock::now()); }

Status EngineLoop::Submit(Request request, OutputCallback on_output) {
  if (!on_output) return InvalidArgumentError("Submit needs an output callback");
  std::future<Status> verdict;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!accepting_) {
      return UnavailableError("the server is shutting down and accepts no new requests; retry on "
                              "another replica");
    }
    Command command;
    command.kind = Command::Kind::kSubmit;
    command.request = std::move(request);
    command.on_output = std::move(on_output);
    verdict = command.verdict.get_future();
    commands_.push_back(std::move(command));
  }
  wake_.notify_one();
  return verdict.get();
}

void EngineLoop::Cancel(const std::string& request_id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    Command command;
    command.kind = Command::Kind::kCancel;
    command.request_id = request_id;
    commands_.push_back(std::move(command));
  }
  wake_.notify_one();
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
        return !commands_.empty() || stop_requested_ || engine_->HasUnfinished();
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
    if (engine_->HasUnfinished()) {
      auto outputs = engine_->Step();
      if (outputs.ok()) {
        Deliver(*outputs);
      } else {
        FailAll(outputs.status());
      }
    }
    PublishStats();
    if (stop && !engine_->HasUnfinished() && callbacks_.empty()) {
      std::lock_guard<std::mutex> lock(mu_);
      // Submits were refused since stop_requested_ was set, so only Cancels can be left: moot.
      const bool submits_left =
          std::any_of(commands_.begin(), commands_.end(),
                      [](const Command& c) { return c.kind == Command::Kind::kSubmit; });
      if (!submits_left) break;
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
    case Command::Kind::kSubmit: {
      std::string id = command.request.request_id;
      Status status = Admit(std::move(command.request));
      if (status.ok()) callbacks_.emplace(std::move(id), std::move(command.on_output));
      command.verdict.set_value(std::move(status));
      break;
    }
    case Command::Kind::kCancel:
      // False when the request already finished (its final output is out or on its way).
      (void)engine_->Abort(command.request_id);
      break;
  }
}

Status EngineLoop::Admit(Request request) {
  if (config_.max_live_requests > 0 &&
      callbacks_.size() >= static_cast<size_t>(config_.max_live_requests)) {
    return ResourceExhaustedError(std::to_string(callbacks_.size()) +
                                  " requests are in flight, the server's limit "
                                  "(max_live_requests); retry later");
  }
  const bool too_large = OnlyTooLargeForCache(request, info_);
  Status status = engine_->AddRequest(std::move(request));
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
    it->second(std::move(out));
    if (finished) callbacks_.erase(it);
  }
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
}

}  // namespace tandem
