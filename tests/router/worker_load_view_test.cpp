// WorkerLoadView (src/router/worker_load_view.h): the polled report corrected by the router's own
// requests — admissions a report cannot count are added, requests it counted that left since are
// taken off, and a request that leaves while a poll is out is assumed counted by that poll.
#include <gtest/gtest.h>

#include "router/worker_load_view.h"

namespace tandem {
namespace {

WorkerLoadView::Report Reported(int64_t queued, int64_t available, int32_t batch, double rate = 0) {
  WorkerLoadView::Report r;
  r.queued_prompt_tokens = queued;
  r.available_blocks = available;
  r.batch = batch;
  r.prefill_tokens_per_s = rate;
  return r;
}

WorkerLoadView::Admission Admitted(uint64_t id, uint64_t round, int64_t prompt, int64_t uncached,
                                   int64_t blocks = 0) {
  return {id, round, prompt, uncached, blocks};
}

TEST(WorkerLoadViewTest, AdmissionsAReportCannotCountAreAdded) {
  WorkerLoadView view;
  EXPECT_EQ(view.QueuedPromptTokens(), 0);  // no report yet: only what this router sent
  view.Admit(Admitted(1, 0, 1000, 200, 70));
  EXPECT_EQ(view.QueuedPromptTokens(), 200);  // the uncached part: what the worker will compute
  EXPECT_EQ(view.AvailableBlocks(), -70);
  EXPECT_EQ(view.BatchLoad(), 1);

  view.Answer(1, Reported(5000, 500, 4, 1234.5));  // round 1 began after admission 1: counted
  EXPECT_EQ(view.QueuedPromptTokens(), 5000);
  EXPECT_EQ(view.AvailableBlocks(), 500);
  EXPECT_EQ(view.BatchLoad(), 4);
  EXPECT_EQ(view.PrefillTokensPerS(), 1234.5);

  view.Admit(Admitted(2, 1, 300, 300, 20));  // admitted after round 1 began: not counted
  EXPECT_EQ(view.QueuedPromptTokens(), 5300);
  EXPECT_EQ(view.AvailableBlocks(), 480);
  EXPECT_EQ(view.BatchLoad(), 5);
}

TEST(WorkerLoadViewTest, CountedRequestsThatLeftAreTakenOffUntilTheNextAnswer) {
  WorkerLoadView view;
  view.Admit(Admitted(1, 0, 1000, 1000));
  view.Answer(1, Reported(1000, 100, 1));  // counted it, mid-prefill
  view.Retire(1, /*latest_round=*/1);       // prefilled before round 2 began
  EXPECT_EQ(view.QueuedPromptTokens(), 0);  // not 1000 until the next poll
  EXPECT_EQ(view.BatchLoad(), 0);
  EXPECT_EQ(view.num_live(), 0u);
  view.Answer(2, Reported(0, 100, 0));      // round 2 began after it left: not counted
  EXPECT_EQ(view.QueuedPromptTokens(), 0);
  view.Answer(3, Reported(700, 100, 2));    // others' load
  EXPECT_EQ(view.QueuedPromptTokens(), 700);
  EXPECT_EQ(view.BatchLoad(), 2);
  view.Retire(1, 3);                        // unknown now: ignored
  EXPECT_EQ(view.QueuedPromptTokens(), 700);
}

TEST(WorkerLoadViewTest, ARequestThatLeavesWhileAPollIsOutIsAssumedCountedByIt) {
  WorkerLoadView view;
  view.Admit(Admitted(1, 0, 1000, 1000));
  view.Answer(1, Reported(1000, 100, 1));
  view.Retire(1, /*latest_round=*/2);       // round 2 is out: its answer may still show it
  EXPECT_EQ(view.QueuedPromptTokens(), 0);
  view.Answer(2, Reported(1000, 100, 1));   // it did (the worker answered before the first token)
  EXPECT_EQ(view.QueuedPromptTokens(), 0);
  EXPECT_EQ(view.BatchLoad(), 0);
  view.Answer(3, Reported(0, 100, 0));
  EXPECT_EQ(view.QueuedPromptTokens(), 0);
}

TEST(WorkerLoadViewTest, UncountedRequestsThatLeaveAreSimplyDropped) {
  WorkerLoadView view;
  view.Answer(1, Reported(0, 100, 0));
  view.Admit(Admitted(1, 1, 400, 100, 30));
  view.Admit(Admitted(2, 1, 500, 500, 40));
  EXPECT_EQ(view.QueuedPromptTokens(), 600);
  EXPECT_EQ(view.AvailableBlocks(), 30);
  view.Retire(1, 1);
  EXPECT_EQ(view.QueuedPromptTokens(), 500);
  EXPECT_EQ(view.AvailableBlocks(), 60);
  EXPECT_EQ(view.BatchLoad(), 1);
  view.Reset();  // the worker went down: a new process, nothing known
  EXPECT_EQ(view.QueuedPromptTokens(), 0);
  EXPECT_EQ(view.num_live(), 0u);
}

}  // namespace
}  // namespace tandem
