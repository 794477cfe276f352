// Sequence: the state machine of the header's diagram (every legal transition succeeds, every other
// one is rejected by IsLegalTransition and CHECK-fails in TransitionTo), and the token bookkeeping.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <set>
#include <vector>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "scheduler/sequence.h"

namespace tandem {
namespace {

using S = SequenceState;

constexpr S kAllStates[] = {S::kWaiting,    S::kPrefilling, S::kTransferringKv, S::kDecoding,
                            S::kSwappedOut, S::kFinished,   S::kAborted};

// The diagram of sequence.h, written out edge by edge (independently of IsLegalTransition):
//   waiting -admit-> prefilling; prefilling -first token-> decoding; prefilling -prefill done
//   (disagg)-> transferring_kv; transferring_kv -KV received-> decoding; prefilling / decoding /
//   transferring_kv -preempt(recompute)-> waiting; decoding -preempt(swap)-> swapped_out -swap in->
//   decoding; swapped_out -> waiting (recompute); decoding -eos/stop/length-> finished; prefilling
//   -> finished (the first token already ends it, e.g. max_tokens 1 or an EOS);
//   transferring_kv -> finished (the prefill side of a disaggregated pair is done once the KV is
//   handed over); any state but finished -abort-> aborted. Terminal states go nowhere.
const std::map<S, std::set<S>>& LegalEdges() {
  static const auto* edges = new std::map<S, std::set<S>>{
      // waiting -> transferring_kv: a decode worker reserved blocks for KV a prefill worker sends.
      {S::kWaiting, {S::kPrefilling, S::kTransferringKv, S::kAborted}},
      {S::kPrefilling,
       {S::kDecoding, S::kTransferringKv, S::kWaiting, S::kFinished, S::kAborted}},
      {S::kTransferringKv, {S::kDecoding, S::kWaiting, S::kFinished, S::kAborted}},
      {S::kDecoding, {S::kFinished, S::kWaiting, S::kSwappedOut, S::kAborted}},
      {S::kSwappedOut, {S::kDecoding, S::kWaiting, S::kAborted}},
      {S::kFinished, {}},
      {S::kAborted, {}},
  };
  return *edges;
}

std::shared_ptr<const Request> MakeRequest(std::vector<TokenId> prompt, int32_t max_tokens = 4) {
  auto r = std::make_shared<Request>();
  r->request_id = "r";
  r->prompt_token_ids = std::move(prompt);
  r->sampling.max_tokens = max_tokens;
  return r;
}

// Drives a fresh sequence into `target` along legal edges.
std::unique_ptr<Sequence> SequenceIn(S target) {
  auto seq = std::make_unique<Sequence>(1, MakeRequest({1, 2, 3}), 7);
  const std::map<S, std::vector<S>> paths = {
      {S::kWaiting, {}},
      {S::kPrefilling, {S::kPrefilling}},
      {S::kTransferringKv, {S::kPrefilling, S::kTransferringKv}},
      {S::kDecoding, {S::kPrefilling, S::kDecoding}},
      {S::kSwappedOut, {S::kPrefilling, S::kDecoding, S::kSwappedOut}},
      {S::kFinished, {S::kPrefilling, S::kDecoding, S::kFinished}},
      {S::kAborted, {S::kAborted}},
  };
  for (S s : paths.at(target)) seq->TransitionTo(s);
  EXPECT_EQ(seq->state(), target);
  return seq;
}

TEST(SequenceStateTest, IsLegalTransitionMatchesTheDiagram) {
  int legal = 0;
  for (S from : kAllStates) {
    for (S to : kAllStates) {
      const bool expected = LegalEdges().at(from).contains(to);
      EXPECT_EQ(IsLegalTransition(from, to), expected)
          << SequenceStateName(from) << " -> " << SequenceStateName(to);
      legal += expected;
    }
  }
  EXPECT_EQ(legal, 19);  // 18 + waiting -> transferring_kv (decode-side reservation)
}

TEST(SequenceStateTest, NoSelfTransitions) {
  for (S s : kAllStates) EXPECT_FALSE(IsLegalTransition(s, s)) << SequenceStateName(s);
}

TEST(SequenceStateTest, EveryLegalTransitionSucceedsOnASequence) {
  for (const auto& [from, targets] : LegalEdges()) {
    for (S to : targets) {
      auto seq = SequenceIn(from);
      seq->TransitionTo(to);
      EXPECT_EQ(seq->state(), to) << SequenceStateName(from) << " -> " << SequenceStateName(to);
      EXPECT_EQ(seq->IsLive(), to != S::kFinished && to != S::kAborted);
    }
  }
}

TEST(SequenceStateTest, StateNamesAreDistinct) {
  std::set<std::string_view> names;
  for (S s : kAllStates) names.insert(SequenceStateName(s));
  EXPECT_EQ(names.size(), std::size(kAllStates));
  EXPECT_EQ(SequenceStateName(S::kWaiting), "waiting");
  EXPECT_EQ(SequenceStateName(S::kDecoding), "decoding");
}

using SequenceDeathTest = ::testing::Test;

TEST_F(SequenceDeathTest, IllegalTransitionChecks) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // CHECK failures are logged through spdlog's default logger (stdout unless configured); death
  // tests read stderr.
  auto to_stderr = [] { spdlog::set_default_logger(spdlog::stderr_logger_st("death_test")); };
  // waiting -> decoding skips admission.
  EXPECT_DEATH((to_stderr(), SequenceIn(S::kWaiting)->TransitionTo(S::kDecoding)),
               "illegal transition waiting -> decoding");
  // Terminal states stay terminal.
  EXPECT_DEATH((to_stderr(), SequenceIn(S::kFinished)->TransitionTo(S::kAborted)),
               "illegal transition finished -> aborted");
  EXPECT_DEATH((to_stderr(), SequenceIn(S::kAborted)->TransitionTo(S::kWaiting)),
               "illegal transition aborted -> waiting");
}

TEST(SequenceTest, TokensPromptAndOutput) {
  Sequence seq(42, MakeRequest({5, 6, 7}, 8), 99);
  EXPECT_EQ(seq.id(), 42);
  EXPECT_EQ(seq.seed(), 99u);
  EXPECT_EQ(seq.state(), S::kWaiting);
  EXPECT_EQ(seq.num_prompt_tokens(), 3);
  EXPECT_EQ(seq.num_tokens(), 3);
  EXPECT_EQ(seq.num_output_tokens(), 0);
  EXPECT_EQ(seq.num_computed_tokens, 0);
  seq.AppendToken(11);
  seq.AppendToken(12);
  EXPECT_EQ(seq.num_tokens(), 5);
  EXPECT_EQ(seq.num_output_tokens(), 2);
  EXPECT_EQ(std::vector<TokenId>(seq.tokens().begin(), seq.tokens().end()),
            (std::vector<TokenId>{5, 6, 7, 11, 12}));
  EXPECT_EQ(std::vector<TokenId>(seq.prompt_tokens().begin(), seq.prompt_tokens().end()),
            (std::vector<TokenId>{5, 6, 7}));
  EXPECT_EQ(std::vector<TokenId>(seq.output_tokens().begin(), seq.output_tokens().end()),
            (std::vector<TokenId>{11, 12}));
  EXPECT_EQ(seq.sampling().max_tokens, 8);
}

}  // namespace
}  // namespace tandem
