// Engine roles of disaggregated serving: a prefill engine hands a sequence's KV to a decode engine
// (through host memory, as the transport would), and the pair produces exactly what a colocated
// engine does; KV accounting is whole on both sides after success and after cancellation before
// and during the transfer; reservations are all or nothing.
#include <gtest/gtest.h>

#include <map>

#include "support/engine_fixture.h"

namespace tandem {
namespace {

using testing::GreedyRequest;
using testing::MakeCpuEngine;
using testing::ExpectPoolWhole;
using testing::RunToCompletion;

std::vector<TokenId> Prompt(int n, int salt = 0) { return testing::SyntheticPrompt(n, salt); }

constexpr char kModel[] = "tiny-llama31";

std::unique_ptr<Engine> MakeRole(EngineRole role, int32_t num_blocks = 256) {
  EngineConfig config;
  config.role = role;
  config.num_kv_blocks = num_blocks;
  config.max_num_batched_tokens = 64;
  return MakeCpuEngine(kModel, config);
}

// Runs the prefill engine until every request handed off; returns the handoffs and the tokens
// each request streamed on the prefill side.
std::map<std::string, KvHandoff> PrefillAll(Engine& prefill, std::map<std::string, std::vector<TokenId>>* streamed) {
  std::map<std::string, KvHandoff> handoffs;
  for (int step = 0; step < 1000 && prefill.HasUnfinished(); ++step) {
    auto outputs = prefill.Step();
    EXPECT_TRUE(outputs.ok());
    for (const auto& out : *outputs) {
      for (const auto& t : out.new_tokens) (*streamed)[out.request_id].push_back(t.token);
    }
    for (const std::string& id : prefill.TakeTransferReady()) {
      auto kv = prefill.ReadKvForTransfer(id);
      EXPECT_TRUE(kv.ok()) << kv.status().ToString();
      auto released = prefill.ReleaseTransferred(id);
      EXPECT_TRUE(released.ok());
      EXPECT_TRUE(released->finished);
      EXPECT_EQ(released->finish_reason, FinishReason::kNone);
      handoffs[id] = std::move(kv).value();
    }
    prefill.CheckInvariants();
  }
  return handoffs;
}

TEST(EngineDisaggTest, PrefillThenDecodeMatchesColocated) {
  auto colocated = MakeRole(EngineRole::kColocated);
  auto prefill = MakeRole(EngineRole::kPrefill);
  auto decode = MakeRole(EngineRole::kDecode, 128);
  ASSERT_TRUE(colocated && prefill && decode);
  const std::vector<std::pair<int, int>> shapes = {{5, 12}, {16, 9}, {17, 20}, {150, 7}};
  for (size_t i = 0; i < shapes.size(); ++i) {
    const std::string id = "r" + std::to_string(i);
    auto prompt = Prompt(shapes[i].first, static_cast<int>(i));
    ASSERT_TRUE(colocated->AddRequest(GreedyRequest(id, prompt, shapes[i].second)).ok());
    ASSERT_TRUE(prefill->AddRequest(GreedyRequest(id, prompt, shapes[i].second)).ok());
    // Reserved before any KV exists; the decode engine's block ids differ from the sender's.
    ASSERT_TRUE(decode->AddTransferredRequest(GreedyRequest(id, prompt, shapes[i].second)).ok());
  }
  EXPECT_EQ(decode->Stats().num_transferring, shapes.size());
  EXPECT_GT(decode->Stats().blocks.num_in_use, 0);
  EXPECT_FALSE(decode->HasStepWork());  // waiting for KV is not work for the step loop
  auto expected = RunToCompletion(*colocated);

  std::map<std::string, std::vector<TokenId>> tokens;
  auto handoffs = PrefillAll(*prefill, &tokens);
  ExpectPoolWhole(*prefill);
  ASSERT_EQ(handoffs.size(), shapes.size());
  for (auto& [id, kv] : handoffs) {
    EXPECT_EQ(tokens[id].size(), 1u) << "the prefill worker streams exactly the first token";
    ASSERT_TRUE(decode->CompleteTransfer(kv).ok());
  }
  for (int step = 0; step < 1000 && decode->HasUnfinished(); ++step) {
    auto outputs = decode->Step();
    ASSERT_TRUE(outputs.ok());
    for (const auto& out : *outputs) {
      for (const auto& t : out.new_tokens) tokens[out.request_id].push_back(t.token);
      if (out.finished) {
        EXPECT_EQ(out.finish_reason, FinishReason::kLength);
        EXPECT_EQ(out.num_output_tokens, static_cast<int32_t>(expected[out.request_id].tokens.size()));
      }
    }
    decode->CheckInvariants();
  }
  ExpectPoolWhole(*decode);
  for (auto& [id, done] : expected) EXPECT_EQ(tokens[id], done.tokens) << id;
  EXPECT_EQ(decode->Stats().blocks.prefix_queries_tokens, 0) << "the decode engine prefilled";
}

TEST(EngineDisaggTest, RequestEndingAtItsFirstTokenIsNotHandedOff) {
  auto prefill = MakeRole(EngineRole::kPrefill);
  ASSERT_NE(prefill, nullptr);
  ASSERT_TRUE(prefill->AddRequest(GreedyRequest("one", Prompt(20), 1)).ok());
  auto done = RunToCompletion(*prefill);
  EXPECT_EQ(done["one"].tokens.size(), 1u);
  EXPECT_EQ(done["one"].finish_reason, FinishReason::kLength);
  EXPECT_TRUE(prefill->TakeTransferReady().empty());
  ExpectPoolWhole(*prefill);
}

TEST(EngineDisaggTest, CancelBeforeTransferFreesTheReservation) {
  auto decode = MakeRole(EngineRole::kDecode, 64);
  ASSERT_NE(decode, nullptr);
  ASSERT_TRUE(decode->AddTransferredRequest(GreedyRequest("a", Prompt(100), 50)).ok());
  EXPECT_EQ(decode->Stats().blocks.num_in_use, 7);  // 101 tokens of 16
  EXPECT_TRUE(decode->Abort("a"));
  auto outputs = decode->Step();
  ASSERT_TRUE(outputs.ok());
  ASSERT_EQ(outputs->size(), 1u);
  EXPECT_EQ((*outputs)[0].finish_reason, FinishReason::kAbort);
  ExpectPoolWhole(*decode);
  // The KV arriving after the cancel is refused; nothing changes.
  KvHandoff late;
  late.request_id = "a";
  late.geometry = decode->kv_geometry();
  EXPECT_EQ(decode->CompleteTransfer(late).code(), StatusCode::kNotFound);
  ExpectPoolWhole(*decode);
}

TEST(EngineDisaggTest, FailedTransferEndsWithErrorAndFreesBlocks) {
  auto prefill = MakeRole(EngineRole::kPrefill);
  auto decode = MakeRole(EngineRole::kDecode, 64);
  ASSERT_TRUE(prefill && decode);
  ASSERT_TRUE(prefill->AddRequest(GreedyRequest("b", Prompt(40), 8)).ok());
  ASSERT_TRUE(decode->AddTransferredRequest(GreedyRequest("b", Prompt(40), 8)).ok());
  std::map<std::string, std::vector<TokenId>> tokens;
  auto handoffs = PrefillAll(*prefill, &tokens);
  ExpectPoolWhole(*prefill);
  // Mid-transfer: the peer died. The reservation ends with the transport's error.
  EXPECT_TRUE(decode->Abort("b", UnavailableError("peer went away")));
  auto outputs = decode->Step();
  ASSERT_TRUE(outputs.ok());
  ASSERT_EQ(outputs->size(), 1u);
  EXPECT_EQ((*outputs)[0].finish_reason, FinishReason::kError);
  EXPECT_EQ((*outputs)[0].status.code(), StatusCode::kUnavailable);
  ExpectPoolWhole(*decode);
  // Malformed KV (wrong token count) is refused without touching the reservation.
  ASSERT_TRUE(decode->AddTransferredRequest(GreedyRequest("c", Prompt(39), 8)).ok());
  KvHandoff wrong = handoffs["b"];
  wrong.request_id = "c";
  EXPECT_EQ(decode->CompleteTransfer(wrong).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(decode->Abort("c"));
  ASSERT_TRUE(decode->Step().ok());
  ExpectPoolWhole(*decode);
}

TEST(EngineDisaggTest, ReservationIsAllOrNothing) {
  auto decode = MakeRole(EngineRole::kDecode, 8);
  ASSERT_NE(decode, nullptr);
  ASSERT_TRUE(decode->AddTransferredRequest(GreedyRequest("big", Prompt(100), 10)).ok());  // 7 blocks
  const auto before = decode->Stats().blocks;
  Status s = decode->AddTransferredRequest(GreedyRequest("more", Prompt(40), 10));  // 3 blocks
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
  const auto after = decode->Stats().blocks;
  EXPECT_EQ(after.num_in_use, before.num_in_use);
  EXPECT_EQ(after.num_free, before.num_free);
  EXPECT_TRUE(decode->Abort("big"));
  ASSERT_TRUE(decode->Step().ok());
  ExpectPoolWhole(*decode);
}

}  // namespace
}  // namespace tandem
