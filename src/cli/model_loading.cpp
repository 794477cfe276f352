#include "cli/model_loading.h"

#include <pthread.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <csignal>
#include <spdlog/spdlog.h>

#include "backend/cpu/cpu_backend.h"
#include "model/gguf_file.h"
#include "model/gguf_vocab.h"
#include "model/gguf_weight_source.h"
#include "model/model_source.h"
#ifdef TANDEM_WITH_CUDA
#include "backend/cuda/cuda_backend_factory.h"
#endif

namespace tandem::cli {

void AddModelFlags(CLI::App* cmd, ModelFlags* f) {
  cmd->add_option("--model", f->model,
                  "HF model directory, .gguf file, or config.json (with --dummy-weights)")
      ->required();
  cmd->add_flag("--dummy-weights", f->dummy_weights, "Instantiate the config with seeded random weights");
  cmd->add_option("--dummy-seed", f->dummy_seed, "Seed of the dummy weights");
  cmd->add_option("--backend", f->backend, "cpu or cuda")->capture_default_str();
  cmd->add_option("--threads", f->threads, "CPU backend threads (0: all cores)");
  cmd->add_option("--device", f->device, "CUDA device ordinal");
  cmd->add_option("--gpu-memory-utilization", f->gpu_memory_utilization,
                  "CUDA: fraction of device memory for weights, workspace and KV cache")
      ->capture_default_str();
  cmd->add_option("--block-size", f->engine.block_size, "Tokens per KV block")->capture_default_str();
  cmd->add_option("--num-kv-blocks", f->engine.num_kv_blocks, "KV blocks (0: from --kv-cache-gib)");
  cmd->add_option("--kv-cache-gib", f->kv_cache_gib, "KV cache size in GiB")->capture_default_str();
  cmd->add_option("--max-num-batched-tokens", f->engine.max_num_batched_tokens,
                  "Token budget of one step (prefill chunk + decodes)")->capture_default_str();
  cmd->add_option("--max-num-seqs", f->engine.max_num_seqs, "Sequences per step")->capture_default_str();
  cmd->add_option("--max-model-len", f->engine.max_model_len, "Longest sequence (0: the model's)");
  cmd->add_flag("!--no-prefix-caching", f->engine.enable_prefix_caching, "Disable the prefix cache");
  cmd->add_flag("!--no-cuda-graphs", f->engine.enable_cuda_graphs,
                "CUDA: run decode steps eagerly instead of through CUDA graphs");
  cmd->add_option("--scheduling-policy", f->engine.scheduling_policy, "fcfs or priority")
      ->capture_default_str();
  cmd->add_option("--engine-seed", f->engine.seed, "Seeds requests that bring no seed");
}

StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::filesystem::path& path) {
  if (path.extension() == ".gguf" && std::filesystem::is_regular_file(path)) {
    TANDEM_ASSIGN_OR_RETURN(auto file, GgufFile::Open(path));
    TANDEM_ASSIGN_OR_RETURN(VocabSpec spec, VocabSpecFromGguf(*file));
    return Tokenizer::FromVocabSpec(spec);
  }
  return Tokenizer::FromDirectory(path);
}

StatusOr<std::unique_ptr<Backend>> MakeBackend(const ModelFlags& flags) {
  if (flags.backend == "cpu") {
    return std::unique_ptr<Backend>(std::make_unique<CpuBackend>(CpuBackendConfig{flags.threads}));
  }
  if (flags.backend == "cuda") {
#ifdef TANDEM_WITH_CUDA
    CudaBackendOptions options;
    options.device = flags.device;
    options.gpu_memory_utilization = flags.gpu_memory_utilization;
    return MakeCudaBackend(options);
#else
    return UnimplementedError("this tandem was built without CUDA (configure with -DTANDEM_CUDA=ON)");
#endif
  }
  return InvalidArgumentError("--backend must be cpu or cuda, got '" + flags.backend + "'");
}

StatusOr<LoadedModel> LoadModel(const ModelFlags& flags) {
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, MakeBackend(flags));
  ModelSourceOptions options;
  options.dummy_weights = flags.dummy_weights;
  options.dummy_seed = flags.dummy_seed;
  TANDEM_ASSIGN_OR_RETURN(ModelSource source, OpenModelSource(flags.model, options));
  LoadedModel loaded;
  // Tokenizer and chat template: from GGUF metadata, or tokenizer files beside the model.
  if (source.is_gguf) {
    auto* gguf = static_cast<const GgufWeightSource*>(source.weights.get());
    TANDEM_ASSIGN_OR_RETURN(VocabSpec spec, VocabSpecFromGguf(gguf->file()));
    TANDEM_ASSIGN_OR_RETURN(loaded.tokenizer, Tokenizer::FromVocabSpec(spec));
  } else if (std::filesystem::exists(source.directory / "tokenizer.json")) {
    TANDEM_ASSIGN_OR_RETURN(loaded.tokenizer, Tokenizer::FromDirectory(source.directory));
  }
  if (loaded.tokenizer && !loaded.tokenizer->chat_template().empty()) {
    TANDEM_ASSIGN_OR_RETURN(ChatTemplate tmpl, ChatTemplate::Parse(loaded.tokenizer->chat_template()));
    loaded.chat_template = std::move(tmpl);
  }
  if (loaded.tokenizer && source.config.eos_token_ids.empty()) {
    for (int32_t id : loaded.tokenizer->eos_ids()) source.config.eos_token_ids.push_back(id);
  }
  EngineConfig engine_config = flags.engine;
  engine_config.kv_cache_bytes = static_cast<int64_t>(flags.kv_cache_gib * (1LL << 30));
  spdlog::info("loading {} ({}, {} layers, hidden {})", source.path.string(),
               ModelArchName(source.config.arch), source.config.num_layers, source.config.hidden_size);
  TANDEM_ASSIGN_OR_RETURN(
      loaded.engine,
      Engine::Create(engine_config, source.config, std::move(source.weights), std::move(backend)));
  return loaded;
}

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

sigset_t BlockTerminationSignals(int extra) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  if (extra != 0) sigaddset(&signals, extra);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

void ConfigureLogging(const std::string& level) {
  auto logger = spdlog::stderr_color_mt("tandem");
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(level));
}

}  // namespace tandem::cli
