// Token sampling on the host: the reference semantics that the CUDA sampling kernels must match.
//
// Order of operations on one row of logits (float32, modified in place):
//   1. repetition penalty (prompt + output tokens), presence and frequency penalties (output);
//   2. logprobs, if asked, are taken from the model's raw logits (before step 1);
//   3. temperature == 0: argmax (lowest id wins ties) — done;
//   4. divide by temperature, softmax (max-subtracted), then in this order top-k, top-p, min-p,
//      each on the renormalized distribution left by the previous one;
//   5. draw u in [0, 1) from a counter-based Philox4x32-10 stream keyed by (seed, step) and
//      walk the kept tokens in descending probability (ties by ascending id) to the first whose
//      cumulative probability exceeds u * total.
// The draw depends only on (seed, step), never on the batch, so seeded requests are reproducible.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "tandem/sampling_params.h"
#include "tandem/types.h"

namespace tandem {

// Philox4x32-10, the counter-based generator (Salmon et al., SC'11). Pure function.
std::array<uint32_t, 4> Philox4x32(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);
// A uniform float in [0, 1) for draw `step` of stream `seed`.
float PhiloxUniform(uint64_t seed, uint64_t step);

struct SampleInput {
  const SamplingParams* params = nullptr;
  uint64_t seed = 0;  // params->seed, or an engine-drawn seed fixed at admission
  uint64_t step = 0;  // number of tokens this sequence has generated before this one
  std::span<const TokenId> prompt_tokens;
  std::span<const TokenId> output_tokens;
};

struct TokenLogprob {
  TokenId token = 0;
  float logprob = 0.0f;
};

struct SampleOutput {
  TokenId token = 0;
  float logprob = 0.0f;  // of `token` under the raw distribution (when params->logprobs >= 0)
  std::vector<TokenLogprob> top_logprobs;  // params->logprobs entries, most likely first
};

// Buffers that SampleToken reuses between calls so that the per-token path does not allocate. One
// per thread (e.g. per worker); never shared by concurrent calls. Contents between calls are
// private to SampleToken (`marks` stays all zero between calls).
struct SamplerScratch {
  struct Candidate {
    float weight = 0.0f;  // scaled logit during top-k, then exp(scaled - max)
    TokenId token = 0;
  };
  std::vector<Candidate> candidates;
  std::vector<int32_t> marks;           // vocab-sized: per-token seen flag and output count
  std::vector<TokenId> touched;         // tokens whose logit the penalties changed
  std::vector<float> raw_logits;        // their logits before the penalties, parallel to `touched`
  std::vector<double> bucket_sums;      // per weight bucket, for the top-p cut and the draw
  std::vector<Candidate> bucket_items;  // the candidates of the bucket where the cut falls
};

// Samples one token from `logits` (one row, vocab-sized). Preconditions: `input.params` set and
// valid for logits.size() (SamplingParams::Validate; only cheap parts are re-checked here), every
// prompt/output id in [0, logits.size()) (TANDEM_CHECKed: ids are validated at admission).
// On return `logits` holds the penalized logits (step 1, before temperature).
// Tie and edge rules: top-k ranks tokens by scaled logit, ties by lower id; NaN logits are never
// sampled; +inf logits share all the mass; when every logit is -inf or NaN the result is the
// argmax rule's (lowest non-NaN id, else 0).
// Cost: O(V + prompt + output) with no full-vocabulary sort. top-k keeps a 2k buffer while
// scanning; top-p and the draw bucket the weights by their float bits (16 buckets per octave,
// monotone), sum each bucket, and sort only the bucket where the running sum crosses its target.
// The running sums are taken in double, so a float implementation (the CUDA kernels) can differ
// only when u * total falls within rounding of a cumulative boundary.
SampleOutput SampleToken(std::span<float> logits, const SampleInput& input,
                         SamplerScratch* scratch = nullptr);
// Same, for callers that keep a float buffer (kept for compatibility; allocates its own scratch).
SampleOutput SampleToken(std::span<float> logits, const SampleInput& input,
                         std::vector<float>* scratch);

// log_softmax of `logits` at `token`, and the top `n` entries (descending, ties by id).
float LogSoftmaxAt(std::span<const float> logits, TokenId token);
std::vector<TokenLogprob> TopLogprobs(std::span<const float> logits, int32_t n);

}  // namespace tandem
