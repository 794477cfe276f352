// tandem worker: one prefill or decode worker of a disaggregated deployment. Serves the internal
// tandem.v1.Worker service (the router's control plane) and, on decode workers, a KV receiver.
//
//   tandem worker --role prefill|decode --config configs/cpu-disagg.yaml [--listen ADDR]
//                 [--kv-listen ADDR] [--model PATH] [--device N] [--ready-fd N]
//
// The KV transport is the config's disaggregated.kv_transport: tcp (any backend) or nccl (CUDA
// workers; the prefill engine streams each prompt's KV during its last prefill step).
//
// --ready-fd: once serving, writes "ADDR\n" (the bound gRPC address) to that file descriptor and
// closes it (how `tandem serve` learns where its children listen). SIGTERM/SIGINT: stops taking
// requests, aborts live ones after server.shutdown_grace_s, exits 0.
//
// --index N: which worker of its pool this is, for the config's per-worker engine overrides
// (disaggregated.prefill_engine / decode_engine); without it the engine section applies as is.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <csignal>
#include <iostream>

#include "cli/commands.h"
#include "cli/model_loading.h"
#include "router/disagg_config.h"
#include "router/worker_service.h"
#include "transfer/tcp_kv_transport.h"
#include "worker/engine_loop.h"
#ifdef TANDEM_WITH_NCCL
#include "transfer/nccl/nccl_kv_transport.h"
#endif

namespace tandem::cli {
namespace {

struct WorkerFlags {
  std::string role;
  int index = -1;  // in its pool; -1: no per-worker overrides
  std::string config;
  std::string listen = "127.0.0.1:0";
  std::string kv_listen;  // default: the listen host, any port
  std::string model;
  std::string log_level;
  int device = -1;  // CUDA device; -1: model.device
  int ready_fd = -1;
};

// The config's KV transport for this worker's engine (before the engine moves into its loop: a
// prefill engine streams through the NCCL transport).
StatusOr<std::unique_ptr<KvTransport>> MakeKvTransport(const DisaggSection& d, Engine& engine) {
  KvTransportOptions options;
  options.connect_timeout = std::chrono::milliseconds(d.kv_connect_timeout_ms);
  options.io_timeout = std::chrono::milliseconds(d.kv_io_timeout_ms);
  if (d.kv_transport == "tcp") return std::unique_ptr<KvTransport>(std::make_unique<TcpKvTransport>(options));
#ifdef TANDEM_WITH_NCCL
  auto* cuda = dynamic_cast<CudaBackend*>(&engine.backend());
  if (cuda == nullptr) {
    return InvalidArgumentError("kv_transport nccl needs the cuda backend (model.backend: cuda)");
  }
  NcclKvTransportOptions nccl;
  nccl.transport = options;
  nccl.staging_bytes = static_cast<size_t>(d.kv_staging_mib) << 20;
  TANDEM_ASSIGN_OR_RETURN(auto transport,
                          NcclKvTransport::Create(*cuda, engine.kv_layers(), engine.kv_geometry(), nccl));
  if (engine.config().role == EngineRole::kPrefill) engine.SetKvStreamer(transport.get());
  return std::unique_ptr<KvTransport>(std::move(transport));
#else
  return UnimplementedError("kv_transport nccl: this tandem was built without CUDA/NCCL");
#endif
}

int Run(const WorkerFlags& flags) {
  sigset_t signals = BlockTerminationSignals();

  auto role = ParseEngineRole(flags.role);
  if (!role.ok() || *role == EngineRole::kColocated) {
    std::cerr << "error: --role must be prefill or decode\n";
    return 2;
  }
  auto config = LoadDisaggDeploymentConfig(flags.config);
  if (!config.ok()) {
    std::cerr << "error: " << config.status().ToString() << "\n";
    return 2;
  }
  config->base = WorkerDeploymentConfig(*config, *role, flags.index);
  DeploymentConfig& base = config->base;
  if (!flags.model.empty()) base.model.path = flags.model;
  if (!flags.log_level.empty()) base.log_level = flags.log_level;
  if (flags.device >= 0) base.model.device = flags.device;
  if (Status s = base.Validate(); !s.ok()) {
    std::cerr << "error: " << flags.config << ": " << s.ToString() << "\n";
    return 2;
  }
  ConfigureLogging(base.log_level);
  base.engine.role = *role;
  const std::string role_name(EngineRoleName(*role));

  ModelFlags model_flags = ToModelFlags(base);
  auto loaded = LoadModel(model_flags);
  if (!loaded.ok()) {
    spdlog::error("{} worker: cannot load the model: {}", role_name, loaded.status().ToString());
    return 1;
  }
  v1::ModelInfo model;
  model.set_id(base.model.name);
  model.set_path(base.model.path);
  model.set_architecture(loaded->engine->model_config().architecture);
  model.set_vocab_size(loaded->engine->model_config().vocab_size);
  model.set_max_model_len(loaded->engine->max_model_len());
  model.set_has_tokenizer(loaded->tokenizer != nullptr);
  for (int64_t id : loaded->engine->model_config().eos_token_ids) model.add_eos_token_ids(static_cast<int32_t>(id));
  model.set_backend(base.model.backend);

  auto made = MakeKvTransport(config->disagg, *loaded->engine);
  if (!made.ok()) {
    spdlog::error("{} worker: {}", role_name, made.status().ToString());
    return 1;
  }
  KvTransport& transport = **made;
  EngineLoopConfig loop_config;
  loop_config.max_live_requests = base.server.max_live_requests;
  EngineLoop loop(std::move(loaded->engine), loop_config);

  GenerationServiceOptions service_options;
  service_options.poll_interval = std::chrono::milliseconds(base.server.poll_interval_ms);
  std::string kv_endpoint;
  std::unique_ptr<WorkerService> service;
  if (*role == EngineRole::kDecode) {
    // The receiver needs the service (its reservations); the service needs the endpoint: bind
    // first through a handler that forwards to the service once it exists.
    auto forward = std::make_shared<KvReceiveHandler>();
    KvReceiveHandler handler;
    handler.accept = [forward](const KvHandoff& h) { return forward->accept(h); };
    handler.complete = [forward](KvHandoff h) { return forward->complete(std::move(h)); };
    handler.fail = [forward](const std::string& id, const Status& e) { forward->fail(id, e); };
    const std::string kv_listen = !flags.kv_listen.empty()
                                      ? flags.kv_listen
                                      : flags.listen.substr(0, flags.listen.rfind(':')) + ":0";
    // Requests cannot arrive before the gRPC server starts, so no transfer precedes `forward`.
    *forward = KvReceiveHandler{[](const KvHandoff&) { return UnavailableError("starting"); },
                                [](KvHandoff) { return UnavailableError("starting"); },
                                [](const std::string&, const Status&) {}};
    auto endpoint = transport.Listen(kv_listen, handler);
    if (!endpoint.ok()) {
      spdlog::error("decode worker: {}", endpoint.status().ToString());
      return 1;
    }
    kv_endpoint = *endpoint;
    service = std::make_unique<WorkerService>(loop, transport, model, kv_endpoint, service_options);
    *forward = service->MakeReceiveHandler();
  } else {
    service = std::make_unique<WorkerService>(loop, transport, model, "", service_options);
  }
  auto server = WorkerServer::Start(flags.listen, base.server.max_threads, *service);
  if (!server.ok()) {
    spdlog::error("{} worker: {}", role_name, server.status().ToString());
    return 1;
  }
  spdlog::info("{} worker (pid {}): serving tandem.v1.Worker on {}{}", role_name, getpid(),
               (*server)->address(), kv_endpoint.empty() ? "" : ", KV receiver on " + kv_endpoint);
  if (flags.ready_fd >= 0) {
    const std::string line = (*server)->address() + "\n";
    (void)!write(flags.ready_fd, line.data(), line.size());
    close(flags.ready_fd);
  }

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  spdlog::info("{} worker: stopping", role_name);
  const auto grace = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(base.server.shutdown_grace_s));
  Status drained = loop.Shutdown(Clock::now() + grace);
  if (!drained.ok()) spdlog::warn("{}", drained.message());
  (*server)->Shutdown(Clock::now() + std::chrono::seconds(2));
  transport.Shutdown();  // before the loop (and the engine's KV cache it may write) goes
  spdlog::info("{} worker: stopped", role_name);
  return 0;
}

}  // namespace

void AddWorkerCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<WorkerFlags>();
  auto* cmd = app.add_subcommand("worker", "Run one prefill or decode worker of a disaggregated deployment");
  cmd->add_option("--role", flags->role, "prefill or decode")->required();
  cmd->add_option("--index", flags->index, "This worker's index in its pool (per-worker engine overrides)");
  cmd->add_option("--config", flags->config, "Deployment config (YAML), e.g. configs/cpu-disagg.yaml")
      ->required();
  cmd->add_option("--listen", flags->listen, "host:port of the Worker service (port 0: any)")
      ->capture_default_str();
  cmd->add_option("--kv-listen", flags->kv_listen, "decode: host:port of the KV receiver (default: --listen's host, any port)");
  cmd->add_option("--model", flags->model, "Model path; overrides model.path");
  cmd->add_option("--log-level", flags->log_level, "overrides log_level");
  cmd->add_option("--device", flags->device, "CUDA device; overrides model.device");
  cmd->add_option("--ready-fd", flags->ready_fd, "Write the bound address to this fd once serving");
  cmd->callback([flags, exit_code] { *exit_code = Run(*flags); });
}

}  // namespace tandem::cli
