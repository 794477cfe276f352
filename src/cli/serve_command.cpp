// tandem serve: serves the public gRPC API (tandem.v1.Generation, tandem.v1.Admin, health,
// reflection) from this process, with one colocated worker (prefill and decode in one engine).
//
//   tandem serve --config configs/cpu-colocated.yaml [--model PATH [--model-name NAME]] [--listen ADDR]
//
// Threads: main() loads the model, starts the engine loop and the gRPC server, then waits for
// SIGTERM/SIGINT (blocked in every thread, taken with sigwait). On a signal: health turns
// NOT_SERVING, the engine stops accepting and drains for server.shutdown_grace_s (then aborts what
// is left), the gRPC server stops, and the process exits 0.
//
// With `deployment: disaggregated` (configs/cpu-disagg.yaml) this process serves nothing itself: it
// starts disaggregated.prefill_workers `tandem worker --role prefill`, as many decode workers and
// one `tandem router` as child processes on this host (each reports its bound address through a
// pipe), logs "listening on ADDR" with the router's address, and supervises them: a worker that
// dies is logged (its requests fail UNAVAILABLE at the router) and, with
// disaggregated.restart_workers, started again on the same address after restart_backoff_s
// (doubled for each restart in a row, at most restart_backoff_max_s; logged "restarted ..."); the
// router stops routing to it while it is down and takes it back once it answers. The router dying
// ends everything;
// SIGTERM/SIGINT stops the router first (it drains), then the workers, and exits 0. Children get
// SIGTERM if this process dies (PR_SET_PDEATHSIG).
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <iostream>
#include <memory>
#include <thread>

#include "cli/commands.h"
#include "cli/model_loading.h"
#include "common/config_yaml.h"
#include "model/model_config.h"
#include "router/disagg_config.h"
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

std::string DefaultModelName(const std::string& path) {
  std::filesystem::path p = std::filesystem::path(path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  if (p.extension() == ".gguf" || p.filename() == "config.json") {
    return p.filename() == "config.json" ? p.parent_path().filename().string() : p.stem().string();
  }
  return p.filename().string();
}

// --- disaggregated: child processes ----------------------------------------------------------------

struct Child {
  std::string name;  // "prefill worker 0", "router"
  pid_t pid = -1;
  std::string address;
  bool exited = false;
  // Supervision of workers (the router is never restarted).
  std::vector<std::string> args;    // how it was started; a restart listens on `address` again
  Clock::time_point started_at{};
  Clock::time_point restart_at{};   // when exited: the next start attempt
  double backoff_s = 0;             // the delay before the next restart
};

// Starts `tandem ARGS... --ready-fd N` and waits until it writes its address to the pipe.
StatusOr<Child> StartChild(const std::string& name, std::vector<std::string> args, double timeout_s) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return InternalError("pipe failed");
  args.push_back("--ready-fd");
  args.push_back(std::to_string(fds[1]));
  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) return InternalError("cannot find this executable (/proc/self/exe)");
  exe[n] = '\0';
  std::vector<char*> argv;
  argv.push_back(exe);
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return InternalError("fork failed");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    fcntl(fds[1], F_SETFD, 0);  // the ready pipe survives exec
    execv(exe, argv.data());
    _exit(127);
  }
  close(fds[1]);
  Child child;
  child.name = name;
  child.pid = pid;
  std::string line;
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(timeout_s));
  while (line.find('\n') == std::string::npos) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    pollfd p{fds[0], POLLIN, 0};
    if (left.count() <= 0 || poll(&p, 1, static_cast<int>(left.count())) <= 0) {
      close(fds[0]);
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      return UnavailableError(name + " did not start within " + std::to_string(timeout_s) + " s");
    }
    char buf[256];
    const ssize_t got = read(fds[0], buf, sizeof(buf));
    if (got <= 0) {
      close(fds[0]);
      waitpid(pid, nullptr, 0);
      return UnavailableError(name + " exited during startup (see its log above)");
    }
    line.append(buf, static_cast<size_t>(got));
  }
  close(fds[0]);
  child.address = line.substr(0, line.find('\n'));
  child.started_at = Clock::now();
  return child;
}

// SIGTERM, then SIGKILL after `grace_s`.
void StopChild(Child& child, double grace_s) {
  if (child.exited || child.pid <= 0) return;
  kill(child.pid, SIGTERM);
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(grace_s));
  while (Clock::now() < deadline) {
    if (waitpid(child.pid, nullptr, WNOHANG) == child.pid) {
      child.exited = true;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  spdlog::warn("{} (pid {}) ignored SIGTERM; killing it", child.name, child.pid);
  kill(child.pid, SIGKILL);
  waitpid(child.pid, nullptr, 0);
  child.exited = true;
}

int RunDisaggregated(const ServeFlags& flags, const DisaggDeploymentConfig& config) {
  sigset_t signals = BlockTerminationSignals(SIGCHLD);
  ConfigureLogging(flags.log_level.empty() ? config.base.log_level : flags.log_level);
  spdlog::info("tandem serve: disaggregated deployment from {}: {} prefill + {} decode workers",
               flags.config, config.disagg.prefill_workers, config.disagg.decode_workers);
  std::vector<std::string> common = {"--config", flags.config};
  if (!flags.model.empty()) common.insert(common.end(), {"--model", flags.model});
  if (!flags.log_level.empty()) common.insert(common.end(), {"--log-level", flags.log_level});
  std::vector<Child> children;
  auto stop_all = [&] {
    for (auto it = children.rbegin(); it != children.rend(); ++it) {
      StopChild(*it, config.base.server.shutdown_grace_s + 5);
    }
  };
  std::vector<std::string> prefill_addresses, decode_addresses;
  for (const auto& [role, count] : {std::pair<std::string, int>("prefill", config.disagg.prefill_workers),
                                    std::pair<std::string, int>("decode", config.disagg.decode_workers)}) {
    for (int i = 0; i < count; ++i) {
      std::vector<std::string> args = {"worker", "--role", role, "--index", std::to_string(i),
                                       "--listen", config.disagg.worker_host + ":0"};
      args.insert(args.end(), common.begin(), common.end());
      const auto& devices = role == "prefill" ? config.disagg.prefill_devices : config.disagg.decode_devices;
      if (!devices.empty()) args.insert(args.end(), {"--device", std::to_string(devices[static_cast<size_t>(i)])});
      const std::string name = role + " worker " + std::to_string(i);
      auto child = StartChild(name, args, config.disagg.worker_start_timeout_s);
      if (child.ok()) child->args = args;
      if (!child.ok()) {
        spdlog::error("{}", child.status().ToString());
        stop_all();
        return 1;
      }
      spdlog::info("started {} (pid {}) on {}", name, child->pid, child->address);
      (role == "prefill" ? prefill_addresses : decode_addresses).push_back(child->address);
      children.push_back(std::move(child).value());
    }
  }
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (const auto& a : v) s += (s.empty() ? "" : ",") + a;
    return s;
  };
  std::vector<std::string> router_args = {"router", "--prefill", join(prefill_addresses), "--decode",
                                          join(decode_addresses), "--listen",
                                          flags.listen.empty() ? config.base.server.listen : flags.listen};
  router_args.insert(router_args.end(), common.begin(), common.end());
  if (!flags.model_name.empty()) router_args.insert(router_args.end(), {"--model-name", flags.model_name});
  auto router = StartChild("router", router_args, config.disagg.worker_start_timeout_s);
  if (!router.ok()) {
    spdlog::error("{}", router.status().ToString());
    stop_all();
    return 1;
  }
  spdlog::info("started router (pid {})", router->pid);
  const std::string address = router->address;
  children.push_back(std::move(router).value());
  spdlog::info("listening on {} (router; tandem.v1.Generation, tandem.v1.Admin, health, reflection); "
               "SIGTERM or SIGINT stops", address);

  const DisaggSection& d = config.disagg;
  for (;;) {
    // Wake for a signal or for the earliest restart that is due.
    auto wake = Clock::now() + std::chrono::seconds(3600);
    for (const Child& child : children) {
      if (child.exited && !child.args.empty() && d.restart_workers) wake = std::min(wake, child.restart_at);
    }
    const auto wait_ms = std::max<int64_t>(
        0, std::chrono::duration_cast<std::chrono::milliseconds>(wake - Clock::now()).count());
    timespec timeout{static_cast<time_t>(wait_ms / 1000), static_cast<long>((wait_ms % 1000) * 1000000)};
    const int signal_number = sigtimedwait(&signals, nullptr, &timeout);
    if (signal_number == SIGTERM || signal_number == SIGINT) {
      spdlog::info("received {}; stopping the router, then the workers",
                   signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
      break;
    }
    bool router_died = false;
    for (Child& child : children) {
      int status = 0;
      if (child.exited || waitpid(child.pid, &status, WNOHANG) != child.pid) continue;
      child.exited = true;
      const bool restart = d.restart_workers && !child.args.empty();
      if (restart) {
        // A worker that ran a while starts over from the first delay.
        const double ran_s = std::chrono::duration<double>(Clock::now() - child.started_at).count();
        if (ran_s >= 60 || child.backoff_s == 0) child.backoff_s = d.restart_backoff_s;
        child.restart_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                              std::chrono::duration<double>(child.backoff_s));
      }
      spdlog::error("{} (pid {}) exited ({} {}); its requests fail with UNAVAILABLE{}", child.name,
                    child.pid, WIFSIGNALED(status) ? "signal" : "status",
                    WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status),
                    restart ? fmt::format("; restarting it in {:.1f} s", child.backoff_s) : "");
      router_died = router_died || child.name == "router";
    }
    if (router_died) {
      stop_all();
      return 1;
    }
    for (Child& child : children) {
      if (!child.exited || child.args.empty() || !d.restart_workers || Clock::now() < child.restart_at) {
        continue;
      }
      // Same control address (the router's list stays valid); the KV receiver gets a new port,
      // which each Decode reply names.
      std::vector<std::string> args = child.args;
      for (size_t i = 0; i + 1 < args.size(); ++i) {
        if (args[i] == "--listen") args[i + 1] = child.address;
      }
      auto started = StartChild(child.name, args, d.worker_start_timeout_s);
      child.backoff_s = std::min(child.backoff_s * 2, d.restart_backoff_max_s);
      if (!started.ok()) {
        child.restart_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                              std::chrono::duration<double>(child.backoff_s));
        spdlog::error("restarting {} failed: {}; next try in {:.1f} s", child.name,
                      started.status().ToString(), child.backoff_s);
        continue;
      }
      child.pid = started->pid;
      child.exited = false;
      child.started_at = started->started_at;
      spdlog::info("restarted {} (pid {}) on {}", child.name, child.pid, child.address);
    }
  }
  stop_all();
  spdlog::info("tandem serve: stopped");
  return 0;
}

int Run(const ServeFlags& flags) {
  if (auto disagg = LoadDisaggDeploymentConfig(flags.config); disagg.ok() && disagg->disaggregated) {
    return RunDisaggregated(flags, *disagg);
  }
  // Every thread started from here on inherits this mask; main() takes the signals with sigwait.
  sigset_t signals = BlockTerminationSignals();

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
  auto* cmd = app.add_subcommand("serve", "Serve the gRPC API: one colocated worker, or a disaggregated deployment (router + workers)");
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
