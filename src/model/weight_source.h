// WeightSource: where a model's tensors come from, by Hugging Face name. Implemented by
// safetensors checkpoints, GGUF files (names mapped to HF names) and seeded dummy weights.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "model/host_tensor.h"
#include "tandem/status.h"

namespace tandem {

class WeightSource {
 public:
  virtual ~WeightSource() = default;

  // The tensor named `name` (HF naming). NotFound if absent; the message names the source file(s).
  virtual StatusOr<HostTensor> Get(std::string_view name) const = 0;
  virtual bool Contains(std::string_view name) const = 0;
  virtual std::vector<std::string> TensorNames() const = 0;
  // Human-readable description for logs and errors ("/models/x/model.safetensors (2 shards)").
  virtual std::string Describe() const = 0;
};

}  // namespace tandem
