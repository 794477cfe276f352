// Opening a model from what a user names on the command line or in a deployment config:
//   - a Hugging Face model directory (config.json + model.safetensors or sharded safetensors),
//   - a GGUF file (llama architecture),
//   - with dummy weights: a config.json file or a model directory, instantiated with seeded random
//     weights (benchmarks run real shapes without checkpoints).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "model/model_config.h"
#include "model/weight_source.h"

namespace tandem {

struct ModelSourceOptions {
  bool dummy_weights = false;
  uint64_t dummy_seed = 0;
};

struct ModelSource {
  ModelConfig config;
  std::unique_ptr<WeightSource> weights;
  std::filesystem::path path;       // what was opened
  std::filesystem::path directory;  // where tokenizer files would be (the dir, or the GGUF's dir)
  bool is_gguf = false;
};

StatusOr<ModelSource> OpenModelSource(const std::filesystem::path& path,
                                      const ModelSourceOptions& options = {});

}  // namespace tandem
