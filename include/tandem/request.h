// Request: what a client asked for, immutable once admitted. The engine wraps each Request in a
// Sequence (src/scheduler/sequence.h) that it owns and mutates; API layers never see Sequences.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tandem/sampling_params.h"
#include "tandem/types.h"

namespace tandem {

using Clock = std::chrono::steady_clock;

// Milliseconds from `a` to `b`, and from `start` to now (request timings).
inline double MillisBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}
inline double MillisSince(Clock::time_point start) { return MillisBetween(start, Clock::now()); }

struct Request {
  std::string request_id;                 // unique among live requests of an engine
  std::vector<TokenId> prompt_token_ids;  // non-empty, each in [0, vocab)
  SamplingParams sampling;
  // Scheduling hints (used by SLO-aware and fair policies; FCFS ignores them).
  int32_t priority = 0;                   // lower runs first
  std::string tenant;
  std::optional<double> ttft_slo_ms;
  std::optional<double> tpot_slo_ms;
  Clock::time_point arrival_time = Clock::now();
};

enum class FinishReason {
  kNone,    // still running
  kLength,  // max_tokens reached, or the model's context is full
  kStop,    // an EOS or stop token was produced
  kAbort,   // cancelled by the client or the engine
  kError,   // failed (the output carries a Status)
};

std::string_view FinishReasonName(FinishReason reason);  // "length", "stop", "abort", "error"

struct TokenOutput {
  TokenId token = 0;
  float logprob = 0.0f;                                  // when sampling.logprobs >= 0
  std::vector<std::pair<TokenId, float>> top_logprobs;   // sampling.logprobs entries
};

// What a step produced for one request: the new tokens since the last output, and, when the
// request ended, why. Timings are filled at the end.
struct RequestOutput {
  std::string request_id;
  std::vector<TokenOutput> new_tokens;
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  Status status;                 // non-OK with kError
  int32_t num_prompt_tokens = 0;
  int32_t num_cached_tokens = 0; // prompt tokens served from the prefix cache
  int32_t num_output_tokens = 0; // total so far
  double queue_ms = 0;           // arrival -> first scheduled
  double ttft_ms = 0;            // arrival -> first token
  double tpot_ms = 0;            // mean time per output token after the first
  double transfer_ms = 0;        // disaggregated: KV read + push until the decode side's ack
};

}  // namespace tandem
