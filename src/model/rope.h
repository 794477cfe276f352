// Rotary position embedding: inverse frequencies for every supported scaling type (default,
// linear, dynamic, llama3, yarn), computed the way Hugging Face transformers does, and the cos/sin
// tables every backend rotates by.
#pragma once

#include <cstdint>
#include <vector>

#include "model/model_config.h"

namespace tandem {

struct RopeFrequencies {
  std::vector<float> inv_freq;      // [rotary_dim / 2]
  float attention_scaling = 1.0f;   // multiplies cos and sin (yarn's mscale), 1 otherwise
  int32_t rotary_dim = 0;
};

RopeFrequencies ComputeRopeFrequencies(const ModelConfig& config);

// cos/sin tables [max_positions, rotary_dim / 2], float32, row-major. The angle is computed in
// float32 as HF does (float(position) * inv_freq), then cos/sin of it, times attention_scaling.
void ComputeRopeTables(const RopeFrequencies& freqs, int64_t max_positions, std::vector<float>* cos,
                       std::vector<float>* sin);

}  // namespace tandem
