// tandem serve: serves the public gRPC API (tandem.v1.Generation, tandem.v1.Admin, health,
// reflection) from this process, with one colocated worker (prefill and decode in one engine).
//
//   tandem serve --config configs/cpu-colocated.yaml [--model PATH [--model-name NAME]] [--listen ADDR]
//
// Threads: main() loads the model, starts the engine loop and the gRPC server, then waits for
// SIGTERM/SIGINT (blocked in every thread, taken with sigwait). On a signal: health turns
// NOT_SERVING, the engine stops accepting and drains for server.shutdown_grace_s (then aborts what
// is left), the gRPC server stops, and the process exits 0.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <csignal>
#include <filesystem>
#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "cli/model_loading.h"
#include "common/config_yaml.h"
#include "model/model_config.h"
#include "router/executor.h"
#include "router/grpc_server.h"
#include "worker/engine_loop.h"

namespace tandem::cli {
namespace {

struct ServeFlags {
  std::string config;
  std::string model;       // overrides model.path (and, unless model_name is given, model.name)
  std::string model_name;  // overrides model.name
  std::string listen;    // overrides server.listen
  std::string log_level; // overrides log_level
};

ModelFlags ToModelFlags(const DeploymentConfig& config) {
  ModelFlags flags;
  flags.model = config.model.path;
  flags.dummy_weights = config.model.dummy_weights;
  flags.dummy_seed = config.model.dummy_seed;
  flags.backend = config.model.backend;
  flags.threads = config.model.threads;
  flags.device = config.model.device;
  flags.gpu_memory_utilization = config.model.gpu_memory_utilization;
  flags.engine = config.engine;
  flags.kv_cache_gib = config.kv_cache_gib;
  return flags;
}

std::string DefaultModelName(const std::string& path) {
  std::filesystem::path p = std::filesystem::path(path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  if (p.extension() == ".gguf" || p.filename() == "config.json") {
    return p.filename() == "config.json" ? p.parent_path().filename().string() : p.stem().string();
  }
  return p.filename().string();
}

int Run(const ServeFlags& flags) {
  // Every thread started from here on inherits this mask; main() takes the signals with sigwait.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto config = LoadDeploymentConfig(flags.config);
  if (!config.ok()) {
    std::cerr << "error: " << config.status().ToString() << "\n";
    return 2;
  }
  if (!flags.model.empty()) {
    config->model.path = flags.model;
    config->model.name.clear();  // the config's name was for the config's model
  }
  if (!flags.model_name.empty()) config->model.name = flags.model_name;
  if (!flags.listen.empty()) config->server.listen = flags.listen;
  if (!flags.log_level.empty()) config->log_level = flags.log_level;
  if (config->model.name.empty()) config->model.name = DefaultModelName(config->model.path);
  if (Status s = config->Validate(); !s.ok()) {
    std::cerr << "error: " << flags.config << ": " << s.ToString() << "\n";
    return 2;
  }
  ConfigureLogging(config->log_level);
  spdlog::info("tandem serve: {} deployment from {}", config->deployment, flags.config);

  auto loaded = LoadModel(ToModelFlags(*config));
  if (!loaded.ok()) {
    spdlog::error("cannot load the model: {}", loaded.status().ToString());
    return 1;
  }
  ServedModel served;
  served.id = config->model.name;
  served.path = config->model.path;
  served.architecture = loaded->engine->model_config().architecture;
  served.vocab_size = loaded->engine->model_config().vocab_size;
  served.max_model_len = loaded->engine->max_model_len();
  served.eos_token_ids = loaded->engine->model_config().eos_token_ids;
  served.backend = config->model.backend;
  served.tokenizer = loaded->tokenizer.get();

  EngineLoopConfig loop_config;
  loop_config.max_live_requests = config->server.max_live_requests;
  EngineLoop loop(std::move(loaded->engine), loop_config);
  LocalExecutor executor(loop);

  GrpcServerOptions server_options;
  server_options.listen_address = config->server.listen;
  server_options.max_threads = config->server.max_threads;
  server_options.generation.poll_interval =
      std::chrono::milliseconds(config->server.poll_interval_ms);
  auto server = GrpcServer::Start(server_options, executor, served);
  if (!server.ok()) {
    spdlog::error("{}", server.status().ToString());
    (void)loop.Shutdown(Clock::now());
    return 1;
  }
  const EngineLoopInfo& info = loop.info();
  spdlog::info("model '{}' ({}): vocab {}, max_model_len {}, {} KV blocks of {} tokens, {}",
               served.id, served.architecture, served.vocab_size, served.max_model_len,
               info.num_kv_blocks, info.block_size,
               served.tokenizer != nullptr ? "with tokenizer" : "no tokenizer (token ids only)");
  spdlog::info("listening on {} (tandem.v1.Generation, tandem.v1.Admin, grpc.health.v1.Health, "
               "reflection); SIGTERM or SIGINT stops", (*server)->address());

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  const double grace = config->server.shutdown_grace_s;
  spdlog::info("received {}; draining in-flight requests for up to {:.1f} s",
               signal_number == SIGTERM ? "SIGTERM" : "SIGINT", grace);
  (*server)->SetServing(false);
  const auto drain_deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(grace));
  Status drained = loop.Shutdown(drain_deadline);
  if (!drained.ok()) spdlog::warn("{}", drained.message());
  // Streams got their final outputs; give their handlers a moment to send them, then stop.
  (*server)->Shutdown(Clock::now() + std::chrono::seconds(2));
  spdlog::info("tandem serve: stopped");
  return 0;
}

}  // namespace

void AddServeCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<ServeFlags>();
  auto* cmd = app.add_subcommand("serve", "Serve the gRPC API with one colocated worker");
  cmd->add_option("--config", flags->config, "Deployment config (YAML), e.g. configs/cpu-colocated.yaml")
      ->required();
  cmd->add_option("--model", flags->model,
                  "Model path; overrides model.path of the config (and its model.name: the served "
                  "name becomes the path's last part unless --model-name is given)");
  cmd->add_option("--model-name", flags->model_name, "Name clients use for the model; overrides model.name");
  cmd->add_option("--listen", flags->listen,
                  "host:port to serve on (port 0: any free port); overrides server.listen");
  cmd->add_option("--log-level", flags->log_level, "trace, debug, info, warn, error; overrides log_level");
  cmd->callback([flags, exit_code] { *exit_code = Run(*flags); });
}

}  // namespace tandem::cli
