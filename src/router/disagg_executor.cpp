#include "router/disagg_executor.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <spdlog/spdlog.h>

#include <optional>

#include "router/worker_convert.h"

namespace tandem {
namespace {

Status FromGrpc(const grpc::Status& s, const std::string& what) {
  if (s.ok()) return OkStatus();
  return Status(static_cast<StatusCode>(s.error_code()), what + ": " + s.error_message());
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
// The client's request id from the workers' "<id>#<n>" (Submit appends the suffix).
std::string ClientRequestId(const std::string& worker_id) {
  return worker_id.substr(0, worker_id.rfind('#'));
}

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
  std::string kv_endpoint;  // the decode reservation's
  std::string worker_request_id;  // "<id>#<n>": the id the workers know this admission by
  uint64_t admission_id = 0;
  // One context per call attempt during admission; fixed once the flight is registered.
  std::unique_ptr<grpc::ClientContext> prefill_context;
  std::unique_ptr<grpc::ClientContext> decode_context;
  std::unique_ptr<grpc::ClientReader<v1::WorkerOutput>> prefill;  // after its context: destroyed first
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
      if (std::string(role) == "prefill") {
        const int32_t capacity = options.affinity_blocks > 0 ? options.affinity_blocks : info.num_kv_blocks();
        worker->affinity = std::make_unique<PrefixAffinity>(info.block_size(),
                                                            static_cast<size_t>(std::max(capacity, 0)));
      }
      pool->push_back(std::move(worker));
    }
  }
  executor->block_size_ = block_size;
  executor->poller_ = std::thread([e = executor.get()] { e->PollStats(); });
  return executor;
}

DisaggExecutor::~DisaggExecutor() { Shutdown(); }

void DisaggExecutor::MarkDown(Worker& worker, const std::string& role, const std::string& why) {
  if (worker.up.exchange(false)) {
    spdlog::warn("router: {} worker {} is down ({}); not routing to it until it answers", role,
                 worker.address, why);
    // Back, it is a new process with an empty prefix cache.
    std::lock_guard<std::mutex> lock(mu_);
    worker.load.Reset();
    if (worker.affinity) worker.affinity->Clear();
  }
}

void DisaggExecutor::Retire(Worker& worker, uint64_t admission_id) {
  std::lock_guard<std::mutex> lock(mu_);
  worker.load.Retire(admission_id, poll_round_);
}

void DisaggExecutor::MarkUp(Worker& worker, const std::string& role) {
  if (!worker.up.exchange(true)) {
    spdlog::info("router: {} worker {} answers again; routing to it", role, worker.address);
  }
}

DisaggExecutor::Route DisaggExecutor::PlanRoute(std::span<const uint64_t> block_hashes,
                                                int64_t num_prompt_tokens, const DecodeDemand& demand) {
  std::lock_guard<std::mutex> lock(mu_);
  Route route;
  std::vector<PrefillLoad> prefill(prefill_.size());
  route.uncached_tokens.resize(prefill_.size());
  for (size_t i = 0; i < prefill_.size(); ++i) {
    const Worker& w = *prefill_[i];
    PrefillLoad& load = prefill[i];
    load.up = w.up.load();
    load.num_queued_prompt_tokens = w.load.QueuedPromptTokens();
    load.prefill_tokens_per_s = w.load.PrefillTokensPerS();
    load.num_uncached_tokens = num_prompt_tokens - w.affinity->CachedTokens(block_hashes, num_prompt_tokens);
    load.num_in_flight = w.in_flight.load();
    load.last_pick = w.last_pick;
    route.uncached_tokens[i] = load.num_uncached_tokens;
  }
  route.prefill_order = RankPrefillWorkers(prefill, options_.prefill_policy);
  std::vector<DecodeLoad> decode(decode_.size());
  for (size_t i = 0; i < decode_.size(); ++i) {
    const Worker& w = *decode_[i];
    DecodeLoad& load = decode[i];
    load.up = w.up.load();
    load.num_available_blocks = w.load.AvailableBlocks();
    load.batch_load = w.load.BatchLoad();
    load.last_pick = w.last_pick;
  }
  route.decode_order = RankDecodeWorkers(decode, demand);
  return route;
}

StatusOr<DisaggExecutor::Admitted> DisaggExecutor::Admit(Role role, const v1::WorkerRequest& proto,
                                                        const std::vector<size_t>& order, AdmissionCall& call) {
  const bool decode = role == Role::kDecode;
  const std::string role_name = decode ? "decode" : "prefill";
  const std::string id = ClientRequestId(proto.request_id());  // for messages: the client's id
  std::vector<std::unique_ptr<Worker>>& pool = decode ? decode_ : prefill_;
  int32_t num_tried = 0, num_refused = 0;
  std::string last_error;
  for (size_t index : order) {
    Worker& worker = *pool[index];
    if (!worker.up.load()) continue;  // went down since the plan
    ++num_tried;
    call.stream.reset();
    call.context = std::make_unique<grpc::ClientContext>();
    call.stream = decode ? worker.stub->Decode(call.context.get(), proto)
                         : worker.stub->Prefill(call.context.get(), proto);
    Admitted admitted{index, {}};
    if (call.stream->Read(&admitted.first) && admitted.first.accepted()) return admitted;
    const grpc::Status s = call.stream->Finish();
    call.stream.reset();
    if (s.ok()) return InternalError(role_name + " worker " + worker.address + " did not accept '" + id + "'");
    last_error = role_name + " worker " + worker.address + ": " + s.error_message();
    if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      // No room there (the router's view was stale, or another router took it): next.
      ++num_refused;
      spdlog::info("router: {} worker {} {} '{}' ({}); trying the next", role_name, worker.address,
                   decode ? "has no room for" : "refused", id, s.error_message());
      continue;
    }
    if (IsWorkerGone(s.error_code())) {
      MarkDown(worker, role_name, s.error_message());  // nothing was admitted there: next
      continue;
    }
    return Status(static_cast<StatusCode>(s.error_code()), s.error_message());
  }
  if (num_refused > 0) {
    return ResourceExhaustedError("no " + role_name + " worker " + (decode ? "has KV room for" : "admits") +
                                  " request '" + id + "': " + std::to_string(num_refused) + " of the " +
                                  std::to_string(num_tried) + " " + role_name + " workers tried refused (last: " +
                                  last_error + "); retry later");
  }
  return UnavailableError("no " + role_name + " worker is up" +
                          (last_error.empty() ? std::string() : " (last error: " + last_error + ")"));
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
    flights_[request.request_id] = nullptr;  // the id is taken while it is admitted
  }
  const std::string id = request.request_id;
  // Until admitted, a failure gives the id back.
  struct Unreserve {
    DisaggExecutor* self;
    const std::string& id;
    bool admitted = false;
    ~Unreserve() {
      if (admitted) return;
      std::lock_guard<std::mutex> lock(self->mu_);
      auto it = self->flights_.find(id);
      if (it != self->flights_.end() && it->second == nullptr) self->flights_.erase(it);
    }
  } unreserve{this, id};
  const auto num_prompt_tokens = static_cast<int64_t>(request.prompt_token_ids.size());
  const std::vector<uint64_t> block_hashes = PrefixAffinity::BlockHashes(request.prompt_token_ids, block_size_);
  const DecodeDemand demand = DemandOf(num_prompt_tokens, request.sampling.max_tokens,
                                       info_.model().max_model_len(), block_size_);
  const Route route = PlanRoute(block_hashes, num_prompt_tokens, demand);
  v1::WorkerRequest proto;
  RequestToWorkerProto(request, &proto);
  // Workers key their state by id and notice cancellations at their next poll: a per-admission id
  // keeps a client's quick reuse of its id from meeting the previous request's leftovers there.
  proto.set_request_id(id + "#" + std::to_string(next_worker_seq_.fetch_add(1) + 1));

  // 1. Reserve the KV blocks on a decode worker; 2. admit the prefill, which pushes the KV there.
  auto flight = std::make_shared<Flight>();
  AdmissionCall decode_call, prefill_call;
  TANDEM_ASSIGN_OR_RETURN(Admitted reserved, Admit(Role::kDecode, proto, route.decode_order, decode_call));
  flight->decode_index = reserved.index;
  flight->kv_endpoint = reserved.first.kv_endpoint();
  flight->decode_context = std::move(decode_call.context);
  flight->decode = std::move(decode_call.stream);
  proto.set_kv_endpoint(flight->kv_endpoint);
  StatusOr<Admitted> prefilling = Admit(Role::kPrefill, proto, route.prefill_order, prefill_call);
  if (!prefilling.ok()) {
    flight->decode_context->TryCancel();  // frees the reservation
    Drain(*flight->decode);
    return prefilling.status();
  }
  flight->prefill_index = prefilling->index;
  flight->prefill_context = std::move(prefill_call.context);
  flight->prefill = std::move(prefill_call.stream);
  flight->worker_request_id = proto.request_id();
  flight->on_output = std::move(on_output);
  Worker& decode = *decode_[flight->decode_index];
  Worker& prefill = *prefill_[flight->prefill_index];
  request.prompt_token_ids.clear();
  request.prompt_token_ids.shrink_to_fit();
  flight->request = std::move(request);
  {
    std::lock_guard<std::mutex> lock(mu_);
    flights_[id] = flight;
    unreserve.admitted = true;
    ++num_threads_;
    // Until a poll that began after now answers, the workers' stats do not count this request.
    ++num_picks_;
    prefill.last_pick = decode.last_pick = num_picks_;
    prefill.affinity->Insert(block_hashes);
    flight->admission_id = num_picks_;
    const int64_t uncached = route.uncached_tokens[flight->prefill_index];
    prefill.load.Admit({num_picks_, poll_round_, num_prompt_tokens, uncached, 0});
    decode.load.Admit({num_picks_, poll_round_, num_prompt_tokens, 0, demand.whole_blocks});
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
  // The final output goes out last, once both worker calls ended and the id is no longer in flight
  // here: a client that reuses the id as soon as it sees the end is admitted.
  std::optional<RequestOutput> final_output;
  auto deliver = [&](RequestOutput out) {
    if (!out.new_tokens.empty() && first_token_time == Clock::time_point{}) first_token_time = Clock::now();
    if (out.finished) {
      final_output = std::move(out);
      return;
    }
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
    final_output = std::move(out);
  };

  // Prefill stream: the first token, then the handoff (or the end, at the first token).
  bool handed_off = false, finished = false;
  v1::WorkerOutput msg;
  while (!handed_off && !finished && flight->prefill->Read(&msg)) {
    RequestOutput out = OutputFromWorkerProto(id, msg);
    if (!out.new_tokens.empty() || msg.finished()) Retire(prefill, flight->admission_id);  // prefilled
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
  Retire(prefill, flight->admission_id);
  if (!handed_off) {
    flight->decode_context->TryCancel();
    Drain(*flight->decode);
    // The worker notices a cancelled stream only at its next poll; an explicit Abort queues the
    // release on its engine before the final output lets the client reuse the id (best effort:
    // a worker that is gone has nothing to release).
    grpc::ClientContext abort_context;
    abort_context.set_deadline(std::chrono::system_clock::now() + options_.stats_timeout);
    v1::WorkerAbortRequest abort;
    abort.set_request_id(flight->worker_request_id);
    v1::WorkerAbortResponse aborted;
    (void)decode.stub->Abort(&abort_context, abort, &aborted);
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
  Retire(decode, flight->admission_id);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = flights_.find(id);
    if (it != flights_.end() && it->second == flight) flights_.erase(it);
  }
  if (final_output) flight->on_output(std::move(*final_output));
  std::lock_guard<std::mutex> lock(mu_);
  --num_threads_;
  changed_.notify_all();
}

void DisaggExecutor::Cancel(const std::string& request_id) {
  std::shared_ptr<Flight> flight;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = flights_.find(request_id);
    if (it == flights_.end() || it->second == nullptr) return;  // not admitted yet
    flight = it->second;
  }
  flight->cancelled.store(true);
  flight->prefill_context->TryCancel();
  flight->decode_context->TryCancel();
}

EngineLoopStats DisaggExecutor::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  EngineLoopStats out;
  out.accepting = accepting_;
  out.num_live = static_cast<int32_t>(flights_.size());
  for (const auto* pool : {&prefill_, &decode_}) {
    for (const auto& worker : *pool) {
      const v1::WorkerStats& w = worker->stats;
      const v1::GetStatsResponse& s = w.stats();
      out.num_queued_prompt_tokens += s.num_queued_prompt_tokens();
      out.prefill_tokens_per_s += s.prefill_tokens_per_s();  // the deployment's
      out.num_reserved_kv_blocks += w.num_reserved_kv_blocks();
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
    uint64_t round = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      round = ++poll_round_;
    }
    for (const auto& [pool, role] : {std::pair(&prefill_, "prefill"), std::pair(&decode_, "decode")}) {
      for (size_t i = 0; i < pool->size(); ++i) {
        polls.emplace_back([this, worker = (*pool)[i].get(), round, role = std::string(role)] {
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
          WorkerLoadView::Report report;
          const v1::GetStatsResponse& stats = response.stats();
          report.queued_prompt_tokens = stats.num_queued_prompt_tokens();
          report.prefill_tokens_per_s = stats.prefill_tokens_per_s();
          report.available_blocks = stats.kv_blocks().free() + stats.kv_blocks().cached();
          report.batch = stats.num_running() + stats.num_waiting() + response.num_transferring();
          worker->load.Answer(round, report);
          worker->stats = std::move(response);
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
    for (const auto& [id, flight] : flights_) {
      if (flight != nullptr) live.push_back(flight);  // null: still being admitted
    }
  }
  changed_.notify_all();
  for (const auto& flight : live) {
    flight->cancelled.store(true);
    flight->prefill_context->TryCancel();
    flight->decode_context->TryCancel();
  }
  {
    std::unique_lock<std::mutex> lock(mu_);
    changed_.wait(lock, [this] { return num_threads_ == 0; });
  }
  if (poller_.joinable()) poller_.join();
}

}  // namespace tandem
