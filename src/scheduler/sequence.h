// Sequence: the engine-owned, mutable state of one request (TurboMind's Request/Sequence split).
// Only the engine thread touches a Sequence.
//
// State machine (chronological order; transitions only through TransitionTo, which CHECKs them):
//
//   kWaiting ──admit──▶ kPrefilling ──first token──▶ kDecoding ──eos/stop/length──▶ kFinished
//      ▲                    │  │                        │  ▲
//      └──preempt(recompute)┘  └─prefill done (disagg)─▶ kTransferringKv ─KV received─┘
//      ▲                                                 │
//      └──────────────preempt(recompute)─────────────────┤
//                     kSwappedOut ◀──preempt(swap)───────┘ ──swap in──▶ kDecoding
//   any state but kFinished ──abort──▶ kAborted
//
// Disaggregated serving (EngineConfig::role):
//   prefill worker: kPrefilling ──first token──▶ kTransferringKv ──KV read──▶ kFinished (released;
//                   the request goes on at the decode worker)
//   decode worker:  kWaiting ──blocks reserved──▶ kTransferringKv ──KV written──▶ kDecoding
//                   (a failed or cancelled transfer: kTransferringKv ──▶ kAborted, blocks freed)
//
// A Sequence holds KV blocks exactly while in kPrefilling, kTransferringKv or kDecoding.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "tandem/request.h"
#include "tandem/types.h"

namespace tandem {

enum class SequenceState : uint8_t {
  kWaiting,
  kPrefilling,
  kTransferringKv,
  kDecoding,
  kSwappedOut,
  kFinished,
  kAborted,
};

std::string_view SequenceStateName(SequenceState state);
bool IsLegalTransition(SequenceState from, SequenceState to);

class Sequence {
 public:
  Sequence(SeqId id, std::shared_ptr<const Request> request, uint64_t seed);

  SeqId id() const { return id_; }
  const Request& request() const { return *request_; }
  const SamplingParams& sampling() const { return request_->sampling; }
  uint64_t seed() const { return seed_; }

  SequenceState state() const { return state_; }
  void TransitionTo(SequenceState next);  // CHECKs IsLegalTransition
  bool IsLive() const { return state_ != SequenceState::kFinished && state_ != SequenceState::kAborted; }

  // Prompt followed by generated tokens.
  std::span<const TokenId> tokens() const { return tokens_; }
  std::span<const TokenId> prompt_tokens() const {
    return std::span<const TokenId>(tokens_).first(num_prompt_tokens_);
  }
  std::span<const TokenId> output_tokens() const {
    return std::span<const TokenId>(tokens_).subspan(num_prompt_tokens_);
  }
  int32_t num_tokens() const { return static_cast<int32_t>(tokens_.size()); }
  int32_t num_prompt_tokens() const { return num_prompt_tokens_; }
  int32_t num_output_tokens() const { return num_tokens() - num_prompt_tokens_; }
  void AppendToken(TokenId token) { tokens_.push_back(token); }

  // Tokens whose KV is in this worker's cache (prefix hits included).
  int32_t num_computed_tokens = 0;
  // Prompt tokens found in the prefix cache at the last admission.
  int32_t num_cached_tokens = 0;
  // Times this sequence was preempted.
  int32_t num_preemptions = 0;

  FinishReason finish_reason = FinishReason::kNone;
  // Outputs produced but not yet handed to the caller.
  std::vector<TokenOutput> pending_outputs;

  // Timings (steady clock).
  Clock::time_point first_scheduled_time{};
  Clock::time_point first_token_time{};
  Clock::time_point last_token_time{};

 private:
  SeqId id_;
  std::shared_ptr<const Request> request_;
  uint64_t seed_;
  SequenceState state_ = SequenceState::kWaiting;
  std::vector<TokenId> tokens_;
  int32_t num_prompt_tokens_ = 0;
};

}  // namespace tandem
