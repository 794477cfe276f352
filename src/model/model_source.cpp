#include "model/model_source.h"

#include <fstream>
#include <sstream>

#include "model/dummy_weights.h"
#include "model/gguf_weight_source.h"
#include "model/safetensors_checkpoint.h"

namespace tandem {

StatusOr<ModelSource> OpenModelSource(const std::filesystem::path& path,
                                      const ModelSourceOptions& options) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return NotFoundError("model path " + path.string() + " does not exist");
  }
  ModelSource source;
  source.path = path;
  const bool is_dir = std::filesystem::is_directory(path, ec);
  if (!is_dir && path.extension() == ".gguf") {
    if (options.dummy_weights) {
      return InvalidArgumentError("--dummy-weights takes a config.json or a model directory, not a GGUF file");
    }
    TANDEM_ASSIGN_OR_RETURN(auto gguf, GgufWeightSource::Open(path));
    source.config = gguf->config();
    source.weights = std::move(gguf);
    source.directory = path.parent_path();
    source.is_gguf = true;
    return source;
  }
  if (options.dummy_weights) {
    if (is_dir) {
      TANDEM_ASSIGN_OR_RETURN(source.config, LoadModelConfig(path));
      source.directory = path;
    } else {
      std::ifstream in(path);
      if (!in) return NotFoundError("cannot read " + path.string());
      std::stringstream text;
      text << in.rdbuf();
      TANDEM_ASSIGN_OR_RETURN(source.config, ParseModelConfig(text.str(), path.string()));
      source.directory = path.parent_path();
    }
    source.weights = std::make_unique<DummyWeightSource>(source.config, options.dummy_seed);
    return source;
  }
  if (!is_dir) {
    return InvalidArgumentError("model path " + path.string() +
                                " must be a model directory (config.json + safetensors) or a .gguf "
                                "file; for a bare config.json add --dummy-weights");
  }
  TANDEM_ASSIGN_OR_RETURN(source.config, LoadModelConfig(path));
  TANDEM_ASSIGN_OR_RETURN(auto checkpoint, SafetensorsCheckpoint::Open(path));
  source.weights = std::move(checkpoint);
  source.directory = path;
  return source;
}

}  // namespace tandem
