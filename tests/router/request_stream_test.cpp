// RequestStream: order, the bound (merging, never dropping), and a producer and a consumer on two
// threads.
#include <gtest/gtest.h>

#include <thread>

#include "router/request_stream.h"

namespace tandem {
namespace {

RequestOutput Tokens(std::initializer_list<TokenId> ids, bool finished = false) {
  RequestOutput out;
  out.request_id = "r";
  for (TokenId id : ids) {
    TokenOutput t;
    t.token = id;
    out.new_tokens.push_back(t);
  }
  out.finished = finished;
  if (finished) out.finish_reason = FinishReason::kLength;
  return out;
}

std::vector<TokenId> Flatten(const std::vector<RequestOutput>& outs) {
  std::vector<TokenId> ids;
  for (const auto& o : outs) {
    for (const auto& t : o.new_tokens) ids.push_back(t.token);
  }
  return ids;
}

// A slow client gets merged outputs: the final one must keep every timing, the KV transfer's
// included (it was dropped once, and a disaggregated request reported transfer_ms 0).
TEST(RequestStreamTest, MergingKeepsTheLaterOutputsStateCountsAndEveryTiming) {
  RequestOutput into = Tokens({1, 2});
  into.queue_ms = 1;
  into.ttft_ms = 2;
  RequestOutput last = Tokens({3}, true);
  last.num_prompt_tokens = 5;
  last.num_cached_tokens = 4;
  last.num_output_tokens = 3;
  last.queue_ms = 0.5;
  last.ttft_ms = 12.5;
  last.tpot_ms = 1.25;
  last.transfer_ms = 0.75;
  last.status = InternalError("x");
  MergeOutputs(into, last);
  EXPECT_EQ(Flatten({into}), (std::vector<TokenId>{1, 2, 3}));
  EXPECT_TRUE(into.finished);
  EXPECT_EQ(into.finish_reason, FinishReason::kLength);
  EXPECT_EQ(into.status.code(), StatusCode::kInternal);
  EXPECT_EQ(into.num_prompt_tokens, 5);
  EXPECT_EQ(into.num_cached_tokens, 4);
  EXPECT_EQ(into.num_output_tokens, 3);
  EXPECT_EQ(into.queue_ms, 0.5);
  EXPECT_EQ(into.ttft_ms, 12.5);
  EXPECT_EQ(into.tpot_ms, 1.25);
  EXPECT_EQ(into.transfer_ms, 0.75);
  EXPECT_EQ(into.request_id, "r");
}

TEST(RequestStreamTest, PopReturnsWaitingOutputsInOrderAndNothingOnTimeout) {
  RequestStream stream(8);
  EXPECT_TRUE(stream.Pop(std::chrono::milliseconds(0)).empty());
  stream.Push(Tokens({1, 2}));
  stream.Push(Tokens({3}));
  auto outs = stream.Pop(std::chrono::milliseconds(0));
  ASSERT_EQ(outs.size(), 2u);
  EXPECT_EQ(Flatten(outs), (std::vector<TokenId>{1, 2, 3}));
  EXPECT_EQ(stream.size(), 0u);
}

TEST(RequestStreamTest, BeyondTheBoundOutputsMergeIntoTheNewestWithoutLoss) {
  RequestStream stream(3);
  for (TokenId i = 0; i < 10; ++i) stream.Push(Tokens({i}));
  RequestOutput last = Tokens({10, 11}, /*finished=*/true);
  last.num_output_tokens = 12;
  last.ttft_ms = 5;
  stream.Push(last);
  EXPECT_EQ(stream.size(), 3u);
  auto outs = stream.Pop(std::chrono::milliseconds(0));
  ASSERT_EQ(outs.size(), 3u);
  EXPECT_EQ(Flatten(outs), (std::vector<TokenId>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}));
  EXPECT_FALSE(outs[1].finished);
  EXPECT_TRUE(outs[2].finished);
  EXPECT_EQ(outs[2].finish_reason, FinishReason::kLength);
  EXPECT_EQ(outs[2].num_output_tokens, 12);
  EXPECT_EQ(outs[2].ttft_ms, 5);
}

TEST(RequestStreamTest, ProducerAndConsumerOnTwoThreads) {
  RequestStream stream(4);
  constexpr TokenId kTokens = 5000;
  std::thread producer([&] {
    for (TokenId i = 0; i < kTokens; ++i) stream.Push(Tokens({i}, i + 1 == kTokens));
  });
  std::vector<TokenId> got;
  bool finished = false;
  for (int i = 0; i < 1000000 && !finished; ++i) {  // bounded; ends at the final output
    for (const RequestOutput& out : stream.Pop(std::chrono::milliseconds(10))) {
      EXPECT_FALSE(finished) << "output after the final one";
      for (const auto& t : out.new_tokens) got.push_back(t.token);
      finished = out.finished;
    }
  }
  producer.join();
  ASSERT_TRUE(finished);
  ASSERT_EQ(got.size(), static_cast<size_t>(kTokens));
  for (TokenId i = 0; i < kTokens; ++i) ASSERT_EQ(got[i], i);
}

}  // namespace
}  // namespace tandem
