// GrpcServer: one process's gRPC endpoint: tandem.v1.Generation and tandem.v1.Admin over an
// Executor, the standard grpc.health.v1.Health service and server reflection.
//
// Lifecycle: Start -> (serving) -> SetServing(false) -> Shutdown(deadline). Shutdown stops taking
// calls, lets calls in progress end until the deadline, then cancels the rest (their requests are
// cancelled in the executor as their handlers notice). The caller decides the order against the
// executor's own shutdown (tandem serve drains the engine first; see serve_command.cpp).
#pragma once

#include <memory>
#include <string>

#include "router/executor.h"
#include "router/generation_service.h"
#include "tandem/request.h"
#include "tandem/status.h"

namespace grpc {
class Server;
}

namespace tandem {

struct GrpcServerOptions {
  // host:port; port 0 picks a free one (see port()). Use a loopback host unless the network
  // in front of it is trusted: there is no authentication.
  std::string listen_address = "127.0.0.1:50051";
  // Sync server threads (each open Generate call holds one). Calls beyond it get
  // RESOURCE_EXHAUSTED from gRPC itself. 0: gRPC's default (unbounded).
  int max_threads = 1100;
  GenerationServiceOptions generation;
};

class GrpcServer {
 public:
  // Starts serving. Borrows the executor and model.tokenizer, which must outlive the server.
  // Unavailable when the address cannot be bound.
  static StatusOr<std::unique_ptr<GrpcServer>> Start(const GrpcServerOptions& options,
                                                     Executor& executor, ServedModel model);
  ~GrpcServer();  // Shutdown(now) if not done

  GrpcServer(const GrpcServer&) = delete;
  GrpcServer& operator=(const GrpcServer&) = delete;

  int port() const { return port_; }
  // "host:port" with the port actually bound.
  const std::string& address() const { return address_; }

  // What grpc.health.v1.Health reports, for "" and for each of our services.
  void SetServing(bool serving);
  // Idempotent.
  void Shutdown(Clock::time_point deadline);

 private:
  GrpcServer() = default;

  int port_ = 0;          // Constant after Start
  std::string address_;   // Constant after Start
  std::unique_ptr<GenerationService> generation_;
  std::unique_ptr<AdminService> admin_;
  std::unique_ptr<grpc::Server> server_;
  bool shut_down_ = false;  // used by the owning thread only
};

}  // namespace tandem
