#include "scheduler/sequence.h"

#include "tandem/check.h"

namespace tandem {

std::string_view SequenceStateName(SequenceState state) {
  switch (state) {
    case SequenceState::kWaiting: return "waiting";
    case SequenceState::kPrefilling: return "prefilling";
    case SequenceState::kTransferringKv: return "transferring_kv";
    case SequenceState::kDecoding: return "decoding";
    case SequenceState::kSwappedOut: return "swapped_out";
    case SequenceState::kFinished: return "finished";
    case SequenceState::kAborted: return "aborted";
  }
  return "?";
}

std::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone: return "none";
    case FinishReason::kLength: return "length";
    case FinishReason::kStop: return "stop";
    case FinishReason::kAbort: return "abort";
    case FinishReason::kError: return "error";
  }
  return "?";
}

bool IsLegalTransition(SequenceState from, SequenceState to) {
  using S = SequenceState;
  if (to == S::kAborted) return from != S::kFinished && from != S::kAborted;
  switch (from) {
    // kTransferringKv: a decode worker reserved blocks for KV that a prefill worker sends.
    case S::kWaiting: return to == S::kPrefilling || to == S::kTransferringKv;
    case S::kPrefilling:
      return to == S::kDecoding || to == S::kTransferringKv || to == S::kWaiting || to == S::kFinished;
    case S::kTransferringKv: return to == S::kDecoding || to == S::kFinished || to == S::kWaiting;
    case S::kDecoding: return to == S::kFinished || to == S::kWaiting || to == S::kSwappedOut;
    case S::kSwappedOut: return to == S::kDecoding || to == S::kWaiting;
    case S::kFinished:
    case S::kAborted: return false;
  }
  return false;
}

Sequence::Sequence(SeqId id, std::shared_ptr<const Request> request, uint64_t seed)
    : id_(id), request_(std::move(request)), seed_(seed) {
  tokens_ = request_->prompt_token_ids;
  tokens_.reserve(tokens_.size() + static_cast<size_t>(request_->sampling.max_tokens));
  num_prompt_tokens_ = static_cast<int32_t>(tokens_.size());
}

void Sequence::TransitionTo(SequenceState next) {
  TANDEM_CHECK(IsLegalTransition(state_, next))
      << "sequence " << id_ << ": illegal transition " << SequenceStateName(state_) << " -> "
      << SequenceStateName(next);
  state_ = next;
}

}  // namespace tandem
