#include "router/disagg_executor.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <spdlog/spdlog.h>

#include "router/worker_convert.h"

namespace tandem {
namespace {

Status FromGrpc(const grpc::Status& s, const std::string& what) {
  if (s.ok()) return OkStatus();
  return Status(static_cast<StatusCode>(s.error_code()), what + ": " + s.error_message());
}

double MillisBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

std::unique_ptr<v1::Worker::Stub> MakeStub(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, 64 << 20);
  return v1::Worker::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

// UNAVAILABLE (connection refused or closed) or DEADLINE_EXCEEDED (no answer): the worker is gone.
bool IsWorkerGone(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED;
}

// Reads what is left of a stream whose call was cancelled, then finishes it.
void Drain(grpc::ClientReader<v1::WorkerOutput>& reader) {
  v1::WorkerOutput msg;
  while (reader.Read(&msg)) {
  }
  (void)reader.Finish();
}

}  // namespace

struct DisaggExecutor::Flight {
  Request request;  // prompt cleared once submitted
  OutputCallback on_output;
  size_t prefill_index = 0;
  size_t decode_index = 0;
  grpc::ClientContext prefill_context;
  grpc::ClientContext decode_context;
  std::unique_ptr<grpc::ClientReader<v1::WorkerOutput>> prefill;
  std::unique_ptr<grpc::ClientReader<v1::WorkerOutput>> decode;
  std::atomic<bool> cancelled{false};
};

StatusOr<std::unique_ptr<DisaggExecutor>> DisaggExecutor::Create(DisaggExecutorOptions options) {
  if (options.prefill_workers.empty() || options.decode_workers.empty()) {
    return InvalidArgumentError("the router needs at least one prefill and one decode worker");
  }
  auto executor = std::unique_ptr<DisaggExecutor>(new DisaggExecutor());
  executor->options_ = options;
  int32_t block_size = 0;
  for (const auto& [addresses, pool, role] :
       {std::tuple(&options.prefill_workers, &executor->prefill_, "prefill"),
        std::tuple(&options.decode_workers, &executor->decode_, "decode")}) {
    for (const std::string& address : *addresses) {
      auto worker = std::make_unique<Worker>();
      worker->address = address;
      worker->stub = MakeStub(address);
      grpc::ClientContext context;
      context.set_wait_for_ready(true);
      context.set_deadline(std::chrono::system_clock::now() + options.connect_timeout);
      v1::WorkerInfo info;
      grpc::Status s = worker->stub->GetWorkerInfo(&context, v1::WorkerInfoRequest(), &info);
      if (!s.ok()) return FromGrpc(s, std::string(role) + " worker " + address);
      if (info.role() != role) {
        return InvalidArgumentError("worker " + address + " is a " + info.role() + " worker, listed as " +
                                    role);
      }
      if (block_size != 0 && info.block_size() != block_size) {
        return InvalidArgumentError("worker " + address + " uses KV blocks of " +
                                    std::to_string(info.block_size()) + " tokens, others " +
                                    std::to_string(block_size));
      }
      block_size = info.block_size();
      if (std::string(role) == "decode" && executor->info_.role().empty()) executor->info_ = info;
      pool->push_back(std::move(worker));
    }
  }
  executor->prefill_stats_.resize(executor->prefill_.size());
  executor->decode_stats_.resize(executor->decode_.size());
  executor->poller_ = std::thread([e = executor.get()] { e->PollStats(); });
  return executor;
}

DisaggExecutor::~DisaggExecutor() { Shutdown(); }

void DisaggExecutor::MarkDown(Worker& worker, const std::string& role, const std::string& why) {
  if (worker.up.exchange(false)) {
    spdlog::warn("router: {} worker {} is down ({}); not routing to it until it answers", role,
                 worker.address, why);
  }
}

void DisaggExecutor::MarkUp(Worker& worker, const std::string& role) {
  if (!worker.up.exchange(true)) {
    spdlog::info("router: {} worker {} answers again; routing to it", role, worker.address);
  }
}

size_t DisaggExecutor::PickDecode(const std::vector<bool>& skip) {
  // Most free (free + cached) KV blocks, from the latest stats; ties go round robin.
  std::lock_guard<std::mutex> lock(mu_);
  const size_t start = next_decode_++ % decode_.size();
  auto free_blocks = [&](size_t i) {
    const auto& kv = decode_stats_[i].stats().kv_blocks();
    return kv.free() + kv.cached() - decode_[i]->in_flight.load();
  };
  size_t best = SIZE_MAX;
  for (size_t k = 0; k < decode_.size(); ++k) {
    const size_t i = (start + k) % decode_.size();
    if (skip[i] || !decode_[i]->up.load()) continue;
    if (best == SIZE_MAX || free_blocks(i) > free_blocks(best)) best = i;
  }
  return best;
}

size_t DisaggExecutor::PickPrefill(const std::vector<bool>& skip) {
  // Fewest requests in flight (the router's own count: exact and current).
  size_t best = SIZE_MAX;
  for (size_t i = 0; i < prefill_.size(); ++i) {
    if (skip[i] || !prefill_[i]->up.load()) continue;
    if (best == SIZE_MAX || prefill_[i]->in_flight.load() < prefill_[best]->in_flight.load()) best = i;
  }
  return best;
}

Status DisaggExecutor::Admit(const Request& request, Flight& flight) {
  Worker& decode = *decode_[flight.decode_index];
  Worker& prefill = *prefill_[flight.prefill_index];
  v1::WorkerRequest proto;
  RequestToWorkerProto(request, &proto);
  const std::string& id = request.request_id;

  // 1. Reserve KV blocks on the decode worker.
  flight.decode = decode.stub->Decode(&flight.decode_context, proto);
  v1::WorkerOutput first;
  if (!flight.decode->Read(&first) || !first.accepted()) {
    grpc::Status s = flight.decode->Finish();
    if (s.ok()) return InternalError("decode worker " + decode.address + " did not accept '" + id + "'");
    if (IsWorkerGone(s.error_code())) MarkDown(decode, "decode", s.error_message());
    return Status(static_cast<StatusCode>(s.error_code()), s.error_message());
  }
  // 2. Admit the prefill, which pushes the KV to the reservation.
  proto.set_kv_endpoint(first.kv_endpoint());
  flight.prefill = prefill.stub->Prefill(&flight.prefill_context, proto);
  v1::WorkerOutput admitted;
  if (!flight.prefill->Read(&admitted) || !admitted.accepted()) {
    grpc::Status s = flight.prefill->Finish();
    flight.decode_context.TryCancel();
    Drain(*flight.decode);
    if (s.ok()) return InternalError("prefill worker " + prefill.address + " did not accept '" + id + "'");
    if (IsWorkerGone(s.error_code())) MarkDown(prefill, "prefill", s.error_message());
    return Status(static_cast<StatusCode>(s.error_code()), s.error_message());
  }
  return OkStatus();
}

Status DisaggExecutor::Submit(Request request, OutputCallback on_output) {
  if (!on_output) return InvalidArgumentError("Submit needs an output callback");
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!accepting_) return UnavailableError("the router is shutting down; retry on another replica");
    if (flights_.count(request.request_id) != 0) {
      return AlreadyExistsError("request_id '" + request.request_id + "' is already in flight");
    }
    if (static_cast<int64_t>(flights_.size()) >= options_.max_in_flight) {
      return ResourceExhaustedError("the router has " + std::to_string(options_.max_in_flight) +
                                    " requests in flight (server.max_live_requests); retry later");
    }
    // Both workers sample from the same stream: the router fixes the seed.
    if (!request.sampling.seed) request.sampling.seed = seed_rng_();
  }
  const std::string id = request.request_id;
  // A worker found gone during admission is skipped and the next one tried (nothing was reserved
  // on it); any other refusal is the answer.
  std::vector<bool> skip_decode(decode_.size()), skip_prefill(prefill_.size());
  std::shared_ptr<Flight> flight;
  Status admitted = UnavailableError("no worker is up");
  for (;;) {
    const size_t d = PickDecode(skip_decode), p = PickPrefill(skip_prefill);
    if (d == SIZE_MAX || p == SIZE_MAX) {
      return UnavailableError(std::string("no ") + (d == SIZE_MAX ? "decode" : "prefill") +
                              " worker is up (last error: " + admitted.message() + ")");
    }
    flight = std::make_shared<Flight>();
    flight->decode_index = d;
    flight->prefill_index = p;
    admitted = Admit(request, *flight);
    if (admitted.ok()) break;
    if (!decode_[d]->up.load()) {
      skip_decode[d] = true;
    } else if (!prefill_[p]->up.load()) {
      skip_prefill[p] = true;
    } else {
      return admitted;
    }
  }
  flight->on_output = std::move(on_output);
  Worker& decode = *decode_[flight->decode_index];
  Worker& prefill = *prefill_[flight->prefill_index];
  request.prompt_token_ids.clear();
  request.prompt_token_ids.shrink_to_fit();
  flight->request = std::move(request);
  {
    std::lock_guard<std::mutex> lock(mu_);
    flights_[id] = flight;
    ++num_threads_;
  }
  ++decode.in_flight;
  ++prefill.in_flight;
  std::thread([this, flight] { Run(flight); }).detach();
  return OkStatus();
}

void DisaggExecutor::Run(std::shared_ptr<Flight> flight) {
  const std::string& id = flight->request.request_id;
  const Clock::time_point arrival = flight->request.arrival_time;
  Worker& decode = *decode_[flight->decode_index];
  Worker& prefill = *prefill_[flight->prefill_index];
  Clock::time_point first_token_time{};
  double queue_ms = 0;
  double transfer_ms = 0;
  auto deliver = [&](RequestOutput out) {
    if (!out.new_tokens.empty() && first_token_time == Clock::time_point{}) first_token_time = Clock::now();
    flight->on_output(std::move(out));
  };
  auto fail = [&](Status status) {
    RequestOutput out;
    out.request_id = id;
    out.finished = true;
    if (flight->cancelled.load()) {
      out.finish_reason = FinishReason::kAbort;
    } else {
      out.finish_reason = FinishReason::kError;
      out.status = std::move(status);
    }
    flight->on_output(std::move(out));
  };

  // Prefill stream: the first token, then the handoff (or the end, at the first token).
  bool handed_off = false, finished = false;
  v1::WorkerOutput msg;
  while (!handed_off && !finished && flight->prefill->Read(&msg)) {
    RequestOutput out = OutputFromWorkerProto(id, msg);
    queue_ms = msg.queue_ms();
    handed_off = msg.handed_off();
    if (handed_off) transfer_ms = msg.transfer_ms();
    finished = msg.finished() && !handed_off;
    out.finished = finished;
    if (finished || !out.new_tokens.empty()) deliver(std::move(out));
  }
  if (handed_off || finished) {
    while (flight->prefill->Read(&msg)) {
    }
  }
  const grpc::Status prefill_status = flight->prefill->Finish();
  --prefill.in_flight;
  if (!handed_off) {
    flight->decode_context.TryCancel();
    Drain(*flight->decode);
    if (!finished) fail(FromGrpc(prefill_status, "prefill worker " + prefill.address));
  } else {
    // Decode stream: the remaining tokens and the final output.
    bool got_final = false;
    while (!got_final && flight->decode->Read(&msg)) {
      RequestOutput out = OutputFromWorkerProto(id, msg);
      got_final = out.finished;
      if (got_final) {
        out.queue_ms = queue_ms;
        out.transfer_ms = transfer_ms;
        if (first_token_time != Clock::time_point{}) out.ttft_ms = MillisBetween(arrival, first_token_time);
      }
      if (got_final || !out.new_tokens.empty()) deliver(std::move(out));
    }
    if (got_final) {
      while (flight->decode->Read(&msg)) {
      }
    }
    const grpc::Status decode_status = flight->decode->Finish();
    if (!got_final) fail(FromGrpc(decode_status, "decode worker " + decode.address));
  }
  --decode.in_flight;
  std::lock_guard<std::mutex> lock(mu_);
  flights_.erase(id);
  --num_threads_;
  changed_.notify_all();
}

void DisaggExecutor::Cancel(const std::string& request_id) {
  std::shared_ptr<Flight> flight;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = flights_.find(request_id);
    if (it == flights_.end()) return;
    flight = it->second;
  }
  flight->cancelled.store(true);
  flight->prefill_context.TryCancel();
  flight->decode_context.TryCancel();
}

EngineLoopStats DisaggExecutor::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  EngineLoopStats out;
  out.accepting = accepting_;
  out.num_live = static_cast<int32_t>(flights_.size());
  for (const auto* pool : {&prefill_stats_, &decode_stats_}) {
    for (const v1::WorkerStats& w : *pool) {
      const v1::GetStatsResponse& s = w.stats();
      out.engine.num_waiting += static_cast<size_t>(s.num_waiting());
      out.engine.num_running += static_cast<size_t>(s.num_running());
      out.engine.num_transferring += static_cast<size_t>(w.num_transferring());
      out.engine.num_steps += s.num_steps();
      out.engine.num_preemptions += s.num_preemptions();
      BlockManagerStats& b = out.engine.blocks;
      b.num_total += s.kv_blocks().total();
      b.num_free += s.kv_blocks().free();
      b.num_cached += s.kv_blocks().cached();
      b.num_in_use += s.kv_blocks().in_use();
      b.prefix_queries_tokens += s.kv_blocks().prefix_query_tokens();
      b.prefix_hit_tokens += s.kv_blocks().prefix_hit_tokens();
    }
  }
  return out;
}

void DisaggExecutor::PollStats() {
  for (;;) {
    // The heartbeat: every worker's stats, all polls in parallel (a hung worker costs
    // stats_timeout once, not once per worker).
    std::vector<std::thread> polls;
    for (const auto& [pool, stats, role] : {std::tuple(&prefill_, &prefill_stats_, "prefill"),
                                            std::tuple(&decode_, &decode_stats_, "decode")}) {
      for (size_t i = 0; i < pool->size(); ++i) {
        polls.emplace_back([this, worker = (*pool)[i].get(), stats, i, role = std::string(role)] {
          grpc::ClientContext context;
          context.set_deadline(std::chrono::system_clock::now() + options_.stats_timeout);
          v1::WorkerStats response;
          grpc::Status s = worker->stub->GetWorkerStats(&context, v1::WorkerStatsRequest(), &response);
          if (!s.ok()) {
            if (IsWorkerGone(s.error_code())) MarkDown(*worker, role, s.error_message());
            return;
          }
          MarkUp(*worker, role);
          std::lock_guard<std::mutex> lock(mu_);
          (*stats)[i] = std::move(response);
        });
      }
    }
    for (std::thread& t : polls) t.join();
    std::unique_lock<std::mutex> lock(mu_);
    if (changed_.wait_for(lock, options_.stats_interval, [this] { return stopping_; })) return;
  }
}

void DisaggExecutor::Shutdown() {
  std::vector<std::shared_ptr<Flight>> live;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    accepting_ = false;
    stopping_ = true;
    for (const auto& [id, flight] : flights_) live.push_back(flight);
  }
  changed_.notify_all();
  for (const auto& flight : live) {
    flight->cancelled.store(true);
    flight->prefill_context.TryCancel();
    flight->decode_context.TryCancel();
  }
  {
    std::unique_lock<std::mutex> lock(mu_);
    changed_.wait(lock, [this] { return num_threads_ == 0; });
  }
  if (poller_.joinable()) poller_.join();
}

}  // namespace tandem
