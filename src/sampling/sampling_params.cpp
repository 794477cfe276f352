// SamplingParams::Validate: every bound of the public sampling parameters, checked at admission.
#include "tandem/sampling_params.h"

#include <fmt/format.h>

#include <cmath>
#include <string>

namespace tandem {
namespace {

// "nan", "inf", "-inf" or the shortest round-trip decimal; never "-nan".
std::string FormatFloat(float value) {
  if (std::isnan(value)) return "nan";
  return fmt::format("{}", value);
}

Status FiniteInRange(const char* name, float value, float lo, float hi, bool lo_open) {
  bool ok = std::isfinite(value) && (lo_open ? value > lo : value >= lo) && value <= hi;
  if (ok) return OkStatus();
  return InvalidArgumentError(fmt::format("{} must be a finite number in {}{}, {}], got {}", name,
                                          lo_open ? "(" : "[", lo, hi, FormatFloat(value)));
}

}  // namespace

Status SamplingParams::Validate(int64_t vocab_size) const {
  if (vocab_size <= 0) {
    return InvalidArgumentError(fmt::format("vocab_size must be >= 1, got {}", vocab_size));
  }
  TANDEM_RETURN_IF_ERROR(FiniteInRange("temperature", temperature, 0.0f, kMaxTemperature, false));
  if (!(top_k == -1 || top_k == 0 || (top_k >= 1 && top_k <= vocab_size))) {
    return InvalidArgumentError(
        fmt::format("top_k must be -1 or 0 (disabled) or in [1, {}] (the vocabulary size), got {}",
                    vocab_size, top_k));
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return InvalidArgumentError(
        fmt::format("top_p must be a number in (0, 1], got {}", FormatFloat(top_p)));
  }
  if (!(min_p >= 0.0f && min_p <= 1.0f)) {
    return InvalidArgumentError(
        fmt::format("min_p must be a number in [0, 1], got {}", FormatFloat(min_p)));
  }
  TANDEM_RETURN_IF_ERROR(
      FiniteInRange("repetition_penalty", repetition_penalty, 0.0f, kMaxRepetitionPenalty, true));
  TANDEM_RETURN_IF_ERROR(
      FiniteInRange("presence_penalty", presence_penalty, -kMaxPenalty, kMaxPenalty, false));
  TANDEM_RETURN_IF_ERROR(
      FiniteInRange("frequency_penalty", frequency_penalty, -kMaxPenalty, kMaxPenalty, false));
  if (max_tokens < 1) {
    return InvalidArgumentError(fmt::format("max_tokens must be >= 1, got {}", max_tokens));
  }
  if (min_tokens < 0 || min_tokens > max_tokens) {
    return InvalidArgumentError(
        fmt::format("min_tokens must be in [0, max_tokens = {}], got {}", max_tokens, min_tokens));
  }
  for (size_t i = 0; i < stop_token_ids.size(); ++i) {
    TokenId id = stop_token_ids[i];
    if (id < 0 || id >= vocab_size) {
      return InvalidArgumentError(fmt::format(
          "stop_token_ids[{}] must be a token id in [0, {}) (the vocabulary size), got {}", i,
          vocab_size, id));
    }
  }
  if (logprobs < -1 || logprobs > kMaxLogprobs) {
    return InvalidArgumentError(
        fmt::format("logprobs must be in [-1, {}] (-1: none, 0: the sampled token only), got {}",
                    kMaxLogprobs, logprobs));
  }
  return OkStatus();
}

}  // namespace tandem
