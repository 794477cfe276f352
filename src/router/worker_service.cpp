#include "router/worker_service.h"

#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <spdlog/spdlog.h>

#include <optional>

#include "router/api_convert.h"
#include "router/request_stream.h"
#include "router/worker_convert.h"

namespace tandem {
namespace {

// The KV a prefill worker's engine thread hands to the call that pushes it.
class KvSlot {
 public:
  void Set(StatusOr<KvHandoff> kv) {
    std::lock_guard<std::mutex> lock(mu_);
    kv_.emplace(std::move(kv));
  }
  StatusOr<KvHandoff> Take() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!kv_) return InternalError("the engine released the request without its KV");
    StatusOr<KvHandoff> kv = std::move(*kv_);
    kv_.reset();
    return kv;
  }

 private:
  std::mutex mu_;
  std::optional<StatusOr<KvHandoff>> kv_;  // GUARDED_BY(mu_)
};

// Waits for the next batch of outputs, merged into one; nullopt when the call was cancelled (the
// request is then cancelled in the loop).
std::optional<RequestOutput> NextOutput(grpc::ServerContext* context, RequestStream& stream,
                                        EngineLoop& loop, const std::string& id,
                                        std::chrono::milliseconds poll) {
  for (;;) {
    std::vector<RequestOutput> outputs = stream.Pop(poll);
    if (context->IsCancelled()) {
      loop.Cancel(id);
      return std::nullopt;
    }
    if (outputs.empty()) continue;
    RequestOutput out = std::move(outputs.front());
    for (size_t i = 1; i < outputs.size(); ++i) MergeOutputs(out, std::move(outputs[i]));
    return out;
  }
}

grpc::Status EndedStatus(const RequestOutput& out, const std::string& id, const char* role) {
  if (out.finish_reason == FinishReason::kError) return ToGrpcStatus(out.status);
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, std::string("the ") + role +
                                                         " worker aborted request '" + id +
                                                         "' (shutting down)");
}

}  // namespace

WorkerService::WorkerService(EngineLoop& loop, KvTransport& transport, v1::ModelInfo model,
                             std::string kv_endpoint, GenerationServiceOptions options)
    : loop_(loop),
      transport_(transport),
      model_(std::move(model)),
      kv_endpoint_(std::move(kv_endpoint)),
      options_(options) {}

grpc::Status WorkerService::Prefill(grpc::ServerContext* context, const v1::WorkerRequest* proto,
                                    grpc::ServerWriter<v1::WorkerOutput>* writer) {
  OpenStreamScope open(num_open_streams_);
  if (loop_.info().role != EngineRole::kPrefill) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "this is not a prefill worker");
  }
  if (proto->kv_endpoint().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "Prefill needs kv_endpoint");
  }
  Request request = RequestFromWorkerProto(*proto);
  const std::string id = request.request_id;
  const bool with_logprobs = request.sampling.logprobs >= 0;
  auto stream = std::make_shared<RequestStream>(options_.max_queued_outputs);
  auto kv = std::make_shared<KvSlot>();
  // A streaming transport connects to the decode worker now, before the prefill can complete.
  if (Status prepared = transport_.Prepare(proto->kv_endpoint(), id); !prepared.ok()) {
    return ToGrpcStatus(Status(prepared.code(), "cannot reach the decode worker's KV receiver at " +
                                                    proto->kv_endpoint() + ": " + prepared.message()));
  }
  struct ForgetRoute {
    KvTransport& transport;
    const std::string& id;
    ~ForgetRoute() { transport.Forget(id); }
  } forget{transport_, id};
  Status submitted = loop_.Submit(
      std::move(request), [stream](RequestOutput out) { stream->Push(std::move(out)); },
      [kv](StatusOr<KvHandoff> handoff) { kv->Set(std::move(handoff)); });
  if (!submitted.ok()) return ToGrpcStatus(submitted);
  v1::WorkerOutput accepted;
  accepted.set_accepted(true);
  writer->Write(accepted);
  for (;;) {
    std::optional<RequestOutput> out = NextOutput(context, *stream, loop_, id, options_.poll_interval);
    if (!out) return grpc::Status(grpc::StatusCode::CANCELLED, "request '" + id + "' was cancelled");
    const bool handed_off = out->finished && out->finish_reason == FinishReason::kNone;
    if (out->finished && !handed_off &&
        (out->finish_reason == FinishReason::kError || out->finish_reason == FinishReason::kAbort)) {
      return EndedStatus(*out, id, "prefill");
    }
    if (!handed_off) {
      v1::WorkerOutput msg;
      OutputToWorkerProto(*out, with_logprobs, &msg);
      if (!writer->Write(msg)) {
        loop_.Cancel(id);
        return grpc::Status(grpc::StatusCode::CANCELLED, "the router left request '" + id + "'");
      }
      if (out->finished) return grpc::Status::OK;  // ended at its first token
      continue;
    }
    // Handed off: the first token goes out now (TTFT), then the KV moves.
    if (!out->new_tokens.empty()) {
      v1::WorkerOutput first;
      RequestOutput tokens = *out;
      tokens.finished = false;
      OutputToWorkerProto(tokens, with_logprobs, &first);
      writer->Write(first);
      out->new_tokens.clear();
    }
    const Clock::time_point start = Clock::now();
    StatusOr<KvHandoff> handoff = kv->Take();
    if (!handoff.ok()) return ToGrpcStatus(handoff.status());
    Status sent = transport_.Send(proto->kv_endpoint(), *handoff);
    if (!sent.ok()) {
      spdlog::warn("request {}: KV push to {} failed: {}", id, proto->kv_endpoint(), sent.ToString());
      const StatusCode code = sent.code() == StatusCode::kDeadlineExceeded ? StatusCode::kUnavailable
                                                                            : sent.code();
      return ToGrpcStatus(Status(code, "KV transfer to the decode worker failed: " + sent.message()));
    }
    v1::WorkerOutput last;
    OutputToWorkerProto(*out, with_logprobs, &last);
    last.set_handed_off(true);
    last.set_transfer_ms(MillisSince(start));
    writer->Write(last);
    return grpc::Status::OK;
  }
}

grpc::Status WorkerService::Decode(grpc::ServerContext* context, const v1::WorkerRequest* proto,
                                   grpc::ServerWriter<v1::WorkerOutput>* writer) {
  OpenStreamScope open(num_open_streams_);
  if (loop_.info().role != EngineRole::kDecode) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "this is not a decode worker");
  }
  Request request = RequestFromWorkerProto(*proto);
  const std::string id = request.request_id;
  const bool with_logprobs = request.sampling.logprobs >= 0;
  auto stream = std::make_shared<RequestStream>(options_.max_queued_outputs);
  Status reserved = loop_.SubmitTransferred(
      std::move(request), [stream](RequestOutput out) { stream->Push(std::move(out)); });
  if (!reserved.ok()) return ToGrpcStatus(reserved);
  {
    std::lock_guard<std::mutex> lock(mu_);
    awaiting_kv_.insert(id);
  }
  struct Unregister {
    WorkerService* self;
    const std::string& id;
    ~Unregister() {
      std::lock_guard<std::mutex> lock(self->mu_);
      self->awaiting_kv_.erase(id);
    }
  } unregister{this, id};
  v1::WorkerOutput accepted;
  accepted.set_accepted(true);
  accepted.set_kv_endpoint(kv_endpoint_);
  if (!writer->Write(accepted)) {
    loop_.Cancel(id);
    return grpc::Status(grpc::StatusCode::CANCELLED, "the router left request '" + id + "'");
  }
  for (;;) {
    std::optional<RequestOutput> out = NextOutput(context, *stream, loop_, id, options_.poll_interval);
    if (!out) return grpc::Status(grpc::StatusCode::CANCELLED, "request '" + id + "' was cancelled");
    if (out->finished &&
        (out->finish_reason == FinishReason::kError || out->finish_reason == FinishReason::kAbort)) {
      return EndedStatus(*out, id, "decode");
    }
    v1::WorkerOutput msg;
    OutputToWorkerProto(*out, with_logprobs, &msg);
    if (!writer->Write(msg)) {
      loop_.Cancel(id);
      return grpc::Status(grpc::StatusCode::CANCELLED, "the router left request '" + id + "'");
    }
    if (out->finished) return grpc::Status::OK;
  }
}

KvReceiveHandler WorkerService::MakeReceiveHandler() {
  KvReceiveHandler handler;
  handler.accept = [this](const KvHandoff& header) -> Status {
    if (!(header.geometry == loop_.info().kv_geometry)) {
      return InvalidArgumentError("KV geometry " + header.geometry.ToString() +
                                  " does not match this decode worker's " +
                                  loop_.info().kv_geometry.ToString());
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (awaiting_kv_.count(header.request_id) == 0) {
      return NotFoundError("no KV reservation for request '" + header.request_id +
                           "' here (cancelled, or never reserved)");
    }
    return OkStatus();
  };
  handler.complete = [this](KvHandoff handoff) -> Status {
    {
      std::lock_guard<std::mutex> lock(mu_);
      awaiting_kv_.erase(handoff.request_id);
    }
    return loop_.CompleteTransfer(std::move(handoff));
  };
  handler.fail = [this](const std::string& request_id, const Status& error) {
    loop_.FailTransfer(request_id, UnavailableError("the KV transfer from the prefill worker failed: " +
                                                    error.message()));
  };
  return handler;
}

grpc::Status WorkerService::Abort(grpc::ServerContext* context, const v1::WorkerAbortRequest* request,
                                  v1::WorkerAbortResponse* response) {
  loop_.Cancel(request->request_id());
  return grpc::Status::OK;
}

grpc::Status WorkerService::GetWorkerStats(grpc::ServerContext* context,
                                           const v1::WorkerStatsRequest* request,
                                           v1::WorkerStats* response) {
  const EngineLoopStats stats = loop_.Stats();
  response->set_role(std::string(EngineRoleName(loop_.info().role)));
  FillStats(stats, num_open_streams_.load(), response->mutable_stats());
  response->set_num_transferring(static_cast<int32_t>(stats.engine.num_transferring));
  response->set_num_reserved_kv_blocks(stats.num_reserved_kv_blocks);
  return grpc::Status::OK;
}

grpc::Status WorkerService::GetWorkerInfo(grpc::ServerContext* context,
                                          const v1::WorkerInfoRequest* request,
                                          v1::WorkerInfo* response) {
  response->set_role(std::string(EngineRoleName(loop_.info().role)));
  *response->mutable_model() = model_;
  response->set_block_size(loop_.info().block_size);
  response->set_num_kv_blocks(loop_.info().num_kv_blocks);
  response->set_kv_endpoint(kv_endpoint_);
  return grpc::Status::OK;
}

// --- WorkerServer -------------------------------------------------------------------------------

StatusOr<std::unique_ptr<WorkerServer>> WorkerServer::Start(const std::string& listen_address,
                                                             int max_threads, WorkerService& service) {
  auto server = std::unique_ptr<WorkerServer>(new WorkerServer());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  int port = 0;
  builder.AddListeningPort(listen_address, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  if (max_threads > 0) {
    grpc::ResourceQuota quota("tandem-worker");
    quota.SetMaxThreads(max_threads);
    builder.SetResourceQuota(quota);
  }
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || port == 0) {
    return UnavailableError("cannot listen on '" + listen_address + "'");
  }
  server->address_ = listen_address.substr(0, listen_address.rfind(':')) + ":" + std::to_string(port);
  if (auto* health = server->server_->GetHealthCheckService()) {
    health->SetServingStatus(true);
    health->SetServingStatus("tandem.v1.Worker", true);
  }
  return server;
}

WorkerServer::~WorkerServer() { Shutdown(Clock::now()); }

void WorkerServer::Shutdown(Clock::time_point deadline) {
  if (shut_down_ || server_ == nullptr) return;
  shut_down_ = true;
  const auto left = deadline - Clock::now();
  server_->Shutdown(std::chrono::system_clock::now() +
                    std::chrono::duration_cast<std::chrono::system_clock::duration>(left));
  server_->Wait();
}

}  // namespace tandem
