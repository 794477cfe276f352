// DummyWeightSource: seeded random weights for every tensor a Llama-family model needs, for
// benchmarks and tests that need a real model's shapes but not its values.
//
// Each tensor is generated on first Get() from (seed, tensor name) alone, so the bytes do not
// depend on the order or the thread that asks, and the same seed always gives the same bytes.
// Nothing is materialised up front: a Llama-3.1-8B shape (16 GB in bf16) costs memory only for the
// tensors whose HostTensor views are alive. The source caches each tensor weakly; once every view
// of it is gone the memory is freed, and a later Get() regenerates identical bytes.
//
// Values: embeddings, projections and lm_head ~ N(0, 0.02); norm weights ~ 1 + N(0, 0.02);
// biases ~ N(0, 0.01). The normal is approximated by a sum of four uniforms (fast, bounded at
// about 3.5 sigma), drawn from a counter-based splitmix64 stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "model/model_config.h"
#include "model/tensor_specs.h"
#include "model/weight_source.h"

namespace tandem {

class DummyWeightSource final : public WeightSource {
 public:
  static constexpr float kMatrixStd = 0.02f;
  static constexpr float kNormNoiseStd = 0.02f;
  static constexpr float kBiasStd = 0.01f;

  // Tensors are those of LlamaFamilyTensorSpecs(config), in config.dtype when it is F32, F16 or
  // BF16, else in BF16. Thread-safe; cheap to construct.
  DummyWeightSource(const ModelConfig& config, uint64_t seed);

  StatusOr<HostTensor> Get(std::string_view name) const override;
  bool Contains(std::string_view name) const override;
  std::vector<std::string> TensorNames() const override;
  std::string Describe() const override;

  const std::vector<ExpectedTensor>& specs() const { return specs_; }
  uint64_t seed() const { return seed_; }

 private:
  struct Slot {
    std::mutex mutex;
    std::weak_ptr<const std::vector<std::byte>> bytes;  // GUARDED_BY(mutex)
  };

  std::shared_ptr<const std::vector<std::byte>> Generate(const ExpectedTensor& spec) const;

  // Constant after construction.
  uint64_t seed_;
  std::string description_;
  std::vector<ExpectedTensor> specs_;
  std::unordered_map<std::string, size_t> index_;
  std::unique_ptr<Slot[]> slots_;
};

}  // namespace tandem
