#include "router/grpc_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <spdlog/spdlog.h>

namespace tandem {
namespace {

constexpr const char* kServiceNames[] = {"tandem.v1.Generation", "tandem.v1.Admin"};

std::chrono::system_clock::time_point ToSystemClock(Clock::time_point t) {
  const auto left = t - Clock::now();
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(left);
}

}  // namespace

StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(const GrpcServerOptions& options,
                                                         Executor& executor, ServedModel model) {
  if (options.listen_address.empty()) return InvalidArgumentError("listen address is empty");
  auto server = std::unique_ptr<GrpcServer>(new GrpcServer());
  server->generation_ = std::make_unique<GenerationService>(executor, std::move(model),
                                                            options.generation);
  server->admin_ = std::make_unique<AdminService>(executor, *server->generation_);

  // Both are process-wide switches of grpc++ that take effect for servers built after them.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default: a second server on a taken port would silently share it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  int selected_port = 0;
  builder.AddListeningPort(options.listen_address, grpc::InsecureServerCredentials(),
                           &selected_port);
  builder.RegisterService(server->generation_.get());
  builder.RegisterService(server->admin_.get());
  if (options.max_threads > 0) {
    grpc::ResourceQuota quota("tandem-grpc-server");
    quota.SetMaxThreads(options.max_threads);
    builder.SetResourceQuota(quota);
  }
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || selected_port == 0) {
    return UnavailableError("cannot listen on '" + options.listen_address +
                            "': the address is malformed, not local, or the port is taken");
  }
  server->port_ = selected_port;
  const size_t colon = options.listen_address.rfind(':');
  server->address_ = options.listen_address.substr(0, colon) + ":" + std::to_string(selected_port);
  server->SetServing(true);
  return server;
}

GrpcServer::~GrpcServer() { Shutdown(Clock::now()); }

void GrpcServer::SetServing(bool serving) {
  if (server_ == nullptr) return;
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus(serving);
  for (const char* name : kServiceNames) health->SetServingStatus(name, serving);
}

void GrpcServer::Shutdown(Clock::time_point deadline) {
  if (shut_down_ || server_ == nullptr) return;
  shut_down_ = true;
  SetServing(false);
  server_->Shutdown(ToSystemClock(deadline));
  server_->Wait();
  spdlog::info("gRPC server on {} stopped", address_);
}

}  // namespace tandem
