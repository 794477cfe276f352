// Token sampling on the device with the semantics of SampleToken (sampling/sampler.h), one block
// per row: penalties applied in place; logprob of the token and top-N logprobs of the raw logits
// (log-softmax: float exp, double sum, like the host); temperature 0: argmax (lowest id on ties,
// NaN never chosen); else temperature, top-k, top-p, min-p in that order and the inverse-CDF draw
// with the row's Philox uniform. No sort: top-k, the top-p cut and the draw are each a 4-level radix
// selection over the float bits (8 bits a level, per-digit counts and double sums, descending) in
// (weight desc, id asc) order, ties inside the final key broken by id. Only ids and logprobs are
// written out.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace tandem::kernels {

// The most top logprobs a row may ask for on the device (OpenAI's limit).
constexpr int32_t kMaxDeviceTopLogprobs = 20;

struct SampleRowInput {
  float temperature = 0.0f;  // 0: greedy
  int32_t top_k = 0;         // <= 0 or >= vocab: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
  float uniform = 0.0f;      // PhiloxUniform(seed, step), computed on the host
  float repetition_penalty = 1.0f;  // 1: none
  float presence_penalty = 0.0f;    // both 0: no additive penalty
  float frequency_penalty = 0.0f;
  int32_t num_logprobs = -1;  // -1: none; else 0..kMaxDeviceTopLogprobs top entries
  int32_t penalty_begin = 0;  // this row's entries: [penalty_begin, penalty_end)
  int32_t penalty_end = 0;
};

// A token the penalties touch (unique within its row): `output_count` occurrences in the output;
// the repetition penalty applies to every entry when it is not 1 (the host lists prompt tokens only
// then).
struct PenaltyEntry {
  int32_t token = 0;
  int32_t output_count = 0;
};

struct SampleRowsParams {
  float* logits = nullptr;  // [num_rows, vocab], f32, modified in place (penalties)
  int32_t num_rows = 0;
  int32_t vocab = 0;
  const SampleRowInput* rows = nullptr;     // [num_rows]
  const PenaltyEntry* penalties = nullptr;  // every row's entries
  float* penalty_raw = nullptr;             // [num entries]: raw logits, scratch
  int32_t* out_token = nullptr;             // [num_rows]
  float* out_logprob = nullptr;             // [num_rows]
  int32_t* out_top_token = nullptr;         // [num_rows, kMaxDeviceTopLogprobs]
  float* out_top_logprob = nullptr;         // [num_rows, kMaxDeviceTopLogprobs]
};

cudaError_t LaunchSampleRows(const SampleRowsParams& params, cudaStream_t stream);

}  // namespace tandem::kernels
