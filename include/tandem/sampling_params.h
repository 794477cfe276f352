// SamplingParams: how one request's tokens are chosen and when its generation stops. Part of the
// public API (the gRPC and HTTP front ends fill it); validated once at admission.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "tandem/status.h"
#include "tandem/types.h"

namespace tandem {

struct SamplingParams {
  // 0 means greedy (argmax). Otherwise logits are divided by it before the filters below.
  float temperature = 1.0f;
  int32_t top_k = 0;      // keep the k most likely tokens; 0 (or -1) disables
  float top_p = 1.0f;     // keep the smallest set whose probability reaches top_p; 1 disables
  float min_p = 0.0f;     // drop tokens with p < min_p * p_max; 0 disables
  // HF-style: logits of tokens seen in prompt or output are divided (if > 0) or multiplied (if < 0)
  // by it. 1 disables.
  float repetition_penalty = 1.0f;
  // OpenAI-style, over output tokens: logit -= presence * [count > 0] + frequency * count.
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  // Same request + same seed => same tokens, whatever else shares the batch.
  std::optional<uint64_t> seed;

  int32_t max_tokens = 16;   // tokens to generate, >= 1
  int32_t min_tokens = 0;    // stop conditions are ignored until this many were generated
  bool ignore_eos = false;   // do not stop at the model's EOS ids
  std::vector<TokenId> stop_token_ids;  // extra ids that end generation (the id is emitted)
  // Top-N log-probabilities returned with each sampled token (of the model's raw distribution);
  // -1: none (not even the sampled token's), 0: only the sampled token's.
  int32_t logprobs = -1;

  // InvalidArgument naming the parameter and its allowed range, e.g.
  // "temperature must be a finite number in [0, 100], got nan".
  Status Validate(int64_t vocab_size) const;
};

// Bounds enforced by Validate().
inline constexpr float kMaxTemperature = 100.0f;
inline constexpr float kMaxPenalty = 2.0f;         // |presence|, |frequency| <= 2 (OpenAI range)
inline constexpr float kMaxRepetitionPenalty = 10.0f;
inline constexpr int32_t kMaxLogprobs = 20;

}  // namespace tandem
