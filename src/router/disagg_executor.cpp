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

size_t DisaggExecutor::PickDecode() {
  // Most free (free + cached) KV blocks, from the latest stats; ties go round robin.
  std::lock_guard<std::mutex> lock(mu_);
  size_t best = next_decode_++ % decode_.size();
  auto free_blocks = [&](size_t i) {
    const auto& kv = decode_stats_[i].stats().kv_blocks();
    return kv.free() + kv.cached() - decode_[i]->in_flight.load();
  };
  for (size_t i = 0; i < decode_.size(); ++i) {
    if (free_blocks(i) > free_blocks(best)) best = i;
  }
  return best;
}

size_t DisaggExecutor::PickPrefill() {
  // Fewest requests in flight (the router's own count: exact and current).
  size_t best = 0;
  for (size_t i = 1; i < prefill_.size(); ++i) {
    if (prefill_[i]->in_flight.load() < prefill_[best]->in_flight.load()) best = i;
  }
  return best;
}

Status DisaggExecutor::Submit(Request request, OutputCallback on_output) {
  if (!on_output) return InvalidArgumentError("Submit needs an output callback");
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!accepting_) return UnavailableError("the router is shutting down; retry on another replica");
    if (flights_.count(request.request_id) != 0) {
      return AlreadyExistsError("request_id '" + request.request_id + "' is already in flight");
    }
    // Both workers sample from the same stream: the router fixes the seed.
    if (!request.sampling.seed) request.sampling.seed = seed_rng_();
  }
  auto flight = std::make_shared<Flight>();
  flight->on_output = std::move(on_output);
  flight->decode_index = PickDecode();
  flight->prefill_index = PickPrefill();
  Worker& decode = *decode_[flight->decode_index];
  Worker& prefill = *prefill_[flight->prefill_index];
  v1::WorkerRequest proto;
  RequestToWorkerProto(request, &proto);
  const std::string id = request.request_id;

  // 1. Reserve KV blocks on the decode worker.
  flight->decode = decode.stub->Decode(&flight->decode_context, proto);
  v1::WorkerOutput first;
  if (!flight->decode->Read(&first) || !first.accepted()) {
    grpc::Status s = flight->decode->Finish();
    if (s.ok()) return InternalError("decode worker " + decode.address + " did not accept '" + id + "'");
    return Status(static_cast<StatusCode>(s.error_code()), s.error_message());
  }
  // 2. Admit the prefill, which pushes the KV to the reservation.
  proto.set_kv_endpoint(first.kv_endpoint());
  flight->prefill = prefill.stub->Prefill(&flight->prefill_context, proto);
  v1::WorkerOutput admitted;
  if (!flight->prefill->Read(&admitted) || !admitted.accepted()) {
    grpc::Status s = flight->prefill->Finish();
    flight->decode_context.TryCancel();
    Drain(*flight->decode);
    if (s.ok()) return InternalError("prefill worker " + prefill.address + " did not accept '" + id + "'");
    return Status(static_cast<StatusCode>(s.error_code()), s.error_message());
  }
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
    for (const auto& [pool, stats] : {std::pair(&prefill_, &prefill_stats_), std::pair(&decode_, &decode_stats_)}) {
      for (size_t i = 0; i < pool->size(); ++i) {
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
        v1::WorkerStats response;
        grpc::Status s = (*pool)[i]->stub->GetWorkerStats(&context, v1::WorkerStatsRequest(), &response);
        std::lock_guard<std::mutex> lock(mu_);
        if (s.ok()) (*stats)[i] = std::move(response);
      }
    }
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
