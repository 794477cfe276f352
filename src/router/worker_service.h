// WorkerService: one prefill or decode worker of a disaggregated deployment, serving the internal
// tandem.v1.Worker service (proto/tandem/v1/worker.proto) over its EngineLoop, and WorkerServer,
// the gRPC endpoint that hosts it (plus grpc.health.v1).
//
// Threads: gRPC's sync threads run the calls; each waits on its request's RequestStream, which the
// engine thread fills, polling for cancellation (-> EngineLoop::Cancel, which frees the request's
// KV blocks, reservation included). A prefill call also pushes its request's KV (handed to it by
// the engine thread) through the KvTransport from its own thread, so the engine never waits on the
// network. A decode worker's KvTransport threads call the receive handler, which checks that the
// request is reserved here and hands the KV to the engine thread (EngineLoop::CompleteTransfer).
//
// Ownership: borrows the loop and the transport, which must outlive the server.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>

#include "router/generation_service.h"
#include "tandem/v1/worker.grpc.pb.h"
#include "transfer/kv_transport.h"
#include "worker/engine_loop.h"

namespace grpc {
class Server;
}

namespace tandem {

class WorkerService final : public v1::Worker::Service {
 public:
  // `kv_endpoint`: a decode worker's KV receiver (what Decode answers); empty on prefill workers.
  WorkerService(EngineLoop& loop, KvTransport& transport, v1::ModelInfo model, std::string kv_endpoint,
                GenerationServiceOptions options = {});

  grpc::Status Decode(grpc::ServerContext* context, const v1::WorkerRequest* request,
                      grpc::ServerWriter<v1::WorkerOutput>* writer) override;
  grpc::Status Prefill(grpc::ServerContext* context, const v1::WorkerRequest* request,
                       grpc::ServerWriter<v1::WorkerOutput>* writer) override;
  grpc::Status Abort(grpc::ServerContext* context, const v1::WorkerAbortRequest* request,
                     v1::WorkerAbortResponse* response) override;
  grpc::Status GetWorkerStats(grpc::ServerContext* context, const v1::WorkerStatsRequest* request,
                              v1::WorkerStats* response) override;
  grpc::Status GetWorkerInfo(grpc::ServerContext* context, const v1::WorkerInfoRequest* request,
                             v1::WorkerInfo* response) override;

  // Decode workers: what to pass to KvTransport::Listen. Borrows this service.
  KvReceiveHandler MakeReceiveHandler();

 private:
  EngineLoop& loop_;
  KvTransport& transport_;
  const v1::ModelInfo model_;        // Constant after construction
  const std::string kv_endpoint_;    // Constant after construction
  const GenerationServiceOptions options_;
  std::atomic<int32_t> num_open_streams_{0};
  std::mutex mu_;
  std::unordered_set<std::string> awaiting_kv_;  // GUARDED_BY(mu_): reserved, KV not yet here
};

// The gRPC endpoint of a worker: tandem.v1.Worker and grpc.health.v1.Health.
class WorkerServer {
 public:
  // Borrows the service. Unavailable when the address cannot be bound.
  static StatusOr<std::unique_ptr<WorkerServer>> Start(const std::string& listen_address,
                                                       int max_threads, WorkerService& service);
  ~WorkerServer();
  const std::string& address() const { return address_; }
  void Shutdown(Clock::time_point deadline);  // idempotent

 private:
  WorkerServer() = default;
  std::string address_;
  std::unique_ptr<grpc::Server> server_;
  bool shut_down_ = false;
};

}  // namespace tandem
