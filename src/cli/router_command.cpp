// tandem router: the public API (tandem.v1.Generation, tandem.v1.Admin, health, reflection) of a
// disaggregated deployment, over remote prefill and decode workers (DisaggExecutor).
//
//   tandem router --config configs/cpu-disagg.yaml --prefill ADDR[,ADDR...] --decode ADDR[,ADDR...]
//                 [--listen ADDR] [--model PATH] [--ready-fd N]
//
// The model's facts come from the workers; the tokenizer (for text prompts) is loaded here from
// model.path. SIGTERM/SIGINT: health turns NOT_SERVING, open calls get server.shutdown_grace_s to
// finish, the rest are cancelled on the workers, exit 0.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <csignal>
#include <iostream>

#include "cli/commands.h"
#include "cli/model_loading.h"
#include "router/disagg_config.h"
#include "router/disagg_executor.h"
#include "router/grpc_server.h"

namespace tandem::cli {
namespace {

struct RouterFlags {
  std::string config;
  std::vector<std::string> prefill;
  std::vector<std::string> decode;
  std::string listen;
  std::string model;
  std::string model_name;
  std::string log_level;
  int ready_fd = -1;
};

int Run(const RouterFlags& flags) {
  sigset_t signals = BlockTerminationSignals();

  auto config = LoadDisaggDeploymentConfig(flags.config);
  if (!config.ok()) {
    std::cerr << "error: " << config.status().ToString() << "\n";
    return 2;
  }
  DeploymentConfig& base = config->base;
  if (!flags.model.empty()) base.model.path = flags.model;
  if (!flags.model_name.empty()) base.model.name = flags.model_name;
  if (!flags.listen.empty()) base.server.listen = flags.listen;
  if (!flags.log_level.empty()) base.log_level = flags.log_level;
  ConfigureLogging(base.log_level);

  DisaggExecutorOptions options;
  options.prefill_workers = flags.prefill;
  options.decode_workers = flags.decode;
  options.max_in_flight = base.server.max_live_requests;
  options.stats_interval = std::chrono::milliseconds(config->disagg.stats_interval_ms);
  auto executor = DisaggExecutor::Create(options);
  if (!executor.ok()) {
    spdlog::error("router: {}", executor.status().ToString());
    return 1;
  }
  const v1::ModelInfo& info = (*executor)->info().model();
  std::unique_ptr<Tokenizer> tokenizer;
  if (info.has_tokenizer()) {
    auto loaded = LoadTokenizer(base.model.path);
    if (!loaded.ok()) {
      spdlog::error("router: cannot load the tokenizer: {}", loaded.status().ToString());
      return 1;
    }
    tokenizer = std::move(loaded).value();
  }
  ServedModel served;
  served.id = base.model.name.empty() ? info.id() : base.model.name;
  served.path = info.path();
  served.architecture = info.architecture();
  served.vocab_size = info.vocab_size();
  served.max_model_len = info.max_model_len();
  served.eos_token_ids.assign(info.eos_token_ids().begin(), info.eos_token_ids().end());
  served.backend = info.backend();
  served.tokenizer = tokenizer.get();

  GrpcServerOptions server_options;
  server_options.listen_address = base.server.listen;
  server_options.max_threads = base.server.max_threads;
  server_options.generation.poll_interval = std::chrono::milliseconds(base.server.poll_interval_ms);
  auto server = GrpcServer::Start(server_options, **executor, served);
  if (!server.ok()) {
    spdlog::error("router: {}", server.status().ToString());
    return 1;
  }
  spdlog::info("router (pid {}): serving tandem.v1.Generation on {} over {} prefill and {} decode "
               "workers", getpid(), (*server)->address(), flags.prefill.size(), flags.decode.size());
  if (flags.ready_fd >= 0) {
    const std::string line = (*server)->address() + "\n";
    (void)!write(flags.ready_fd, line.data(), line.size());
    close(flags.ready_fd);
  }

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  spdlog::info("router: stopping; open calls get {:.1f} s", base.server.shutdown_grace_s);
  (*server)->SetServing(false);
  const auto grace = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(base.server.shutdown_grace_s));
  (*server)->Shutdown(Clock::now() + grace);
  (*executor)->Shutdown();
  spdlog::info("router: stopped");
  return 0;
}

}  // namespace

void AddRouterCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<RouterFlags>();
  auto* cmd = app.add_subcommand("router", "Serve the gRPC API over disaggregated prefill and decode workers");
  cmd->add_option("--config", flags->config, "Deployment config (YAML), e.g. configs/cpu-disagg.yaml")
      ->required();
  cmd->add_option("--prefill", flags->prefill, "Prefill workers' host:port")->delimiter(',')->required();
  cmd->add_option("--decode", flags->decode, "Decode workers' host:port")->delimiter(',')->required();
  cmd->add_option("--listen", flags->listen, "host:port to serve on; overrides server.listen");
  cmd->add_option("--model", flags->model, "Model path (tokenizer); overrides model.path");
  cmd->add_option("--model-name", flags->model_name, "Name clients use for the model");
  cmd->add_option("--log-level", flags->log_level, "overrides log_level");
  cmd->add_option("--ready-fd", flags->ready_fd, "Write the bound address to this fd once serving");
  cmd->callback([flags, exit_code] { *exit_code = Run(*flags); });
}

}  // namespace tandem::cli
