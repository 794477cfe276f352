// What every serving subcommand shares: model and engine flags, and building an Engine (plus the
// model's tokenizer and chat template when it has them) from those flags.
#pragma once

#include <CLI/CLI.hpp>

#include <csignal>
#include <memory>
#include <optional>
#include <string>

#include "common/config_yaml.h"
#include "tandem/status.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "worker/engine.h"

namespace tandem::cli {

struct ModelFlags {
  std::string model;  // HF model dir, .gguf file, or (with dummy_weights) a config.json
  bool dummy_weights = false;
  uint64_t dummy_seed = 0;
  std::string backend = "cpu";  // cpu or cuda
  int threads = 0;    // CPU backend threads; 0 = all cores
  int device = 0;     // CUDA device ordinal
  double gpu_memory_utilization = 0.9;  // CUDA: fraction of device memory Tandem may use
  EngineConfig engine;
  double kv_cache_gib = 0.5;
};

void AddModelFlags(CLI::App* cmd, ModelFlags* flags);

struct LoadedModel {
  std::unique_ptr<Engine> engine;
  std::unique_ptr<Tokenizer> tokenizer;        // null when the model ships none
  std::optional<ChatTemplate> chat_template;   // absent when neither tokenizer nor GGUF has one
};

StatusOr<LoadedModel> LoadModel(const ModelFlags& flags);

// The tokenizer of a model directory, a tokenizer-only directory, or a GGUF file's metadata.
StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::filesystem::path& path);

// The model and engine settings of a deployment config, as flags for LoadModel.
ModelFlags ToModelFlags(const DeploymentConfig& config);

// Blocks SIGTERM and SIGINT (plus `extra`, e.g. SIGCHLD) in this thread and the threads it starts,
// and returns that set, for sigwait/sigtimedwait.
sigset_t BlockTerminationSignals(int extra = 0);

// Sets the process-wide logger to stderr (stdout carries results), at `level`.
void ConfigureLogging(const std::string& level);

}  // namespace tandem::cli
