// WorkerLoadView: the router's view of one worker's load — the latest polled report, corrected by
// what this router did since — so the policy (router/worker_picker.h) sees neither this router's
// fresh admissions as missing nor its finished requests as still there until the next poll.
//
// Poll rounds: the router numbers its stats polls 1, 2, ...; an admission made while round r was
// the latest begun carries r. A report answering round R counts the admissions tagged < R that
// were still queued when the worker answered; those tagged >= R it cannot count.
//
//   queued prompt tokens = max(0, reported - whole prompts it counted that left the queue since)
//                          + uncached tokens of live admissions it cannot count
//   available KV blocks  = reported - KV demand of live admissions it cannot count
//   batch load           = max(0, reported - requests it counted that ended since)
//                          + live admissions it cannot count
//
// A request "leaves" when Retire is called: on a prefill worker at its first token (its prompt is
// computed), on a decode worker when it ends. One retired while a poll is out may or may not be in
// that poll's answer; the view assumes it is (it errs toward an idle worker, for one interval).
// Pure bookkeeping, no clocks or threads; the router guards it with its mutex.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>

namespace tandem {

class WorkerLoadView {
 public:
  // What one poll of the worker reported.
  struct Report {
    int64_t queued_prompt_tokens = 0;
    double prefill_tokens_per_s = 0;
    int64_t available_blocks = 0;  // free + cached
    int32_t batch = 0;             // running + waiting + transferring
  };
  // One of this router's requests on the worker.
  struct Admission {
    uint64_t id = 0;              // unique among this view's live admissions
    uint64_t poll_round = 0;      // the latest poll round begun when it was admitted
    int64_t prompt_tokens = 0;    // the whole prompt (what the worker counts as queued)
    int64_t uncached_tokens = 0;  // what the router expects the worker to compute
    int64_t kv_blocks = 0;        // decode: the KV it may grow to (prompt + max_tokens)
  };

  void Admit(const Admission& admission);
  // The admission left the worker's queue. `latest_round`: the latest poll round begun. Unknown
  // ids (already retired) are ignored.
  void Retire(uint64_t id, uint64_t latest_round);
  // The worker answered poll round `round` (rounds answer in order).
  void Answer(uint64_t round, const Report& report);
  // A worker that went down and came back is a new process: its report says what it holds.
  void Reset() { *this = WorkerLoadView(); }

  int64_t QueuedPromptTokens() const;
  double PrefillTokensPerS() const { return report_.prefill_tokens_per_s; }
  int64_t AvailableBlocks() const;
  int32_t BatchLoad() const;
  size_t num_live() const { return live_.size(); }

 private:
  struct Counted {  // what the answered report counted and has left since
    int64_t prompt_tokens = 0;
    int32_t requests = 0;
  };
  bool CountedBy(const Admission& a, uint64_t round) const { return a.poll_round < round; }

  Report report_;
  uint64_t answered_round_ = 0;  // 0: no answer yet
  std::deque<Admission> live_;   // in admission order
  Counted left_;                 // counted by report_, retired since
  Counted left_while_polling_;   // retired while a later poll was out: it may count them
};

}  // namespace tandem
