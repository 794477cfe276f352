// SampleToken's deterministic behaviour: greedy and ties, penalties, reproducibility, logprobs.
// The distributional tests are in sampler_distribution_test.cpp.
#include "sampling/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <thread>
#include <vector>

namespace tandem {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNan = std::numeric_limits<float>::quiet_NaN();

// Uniform logits in [lo, hi) from the raw mt19937 stream (portable across standard libraries).
std::vector<float> RandomLogits(size_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 gen(seed);
  std::vector<float> v(n);
  for (float& x : v) x = lo + (hi - lo) * static_cast<float>(gen() >> 8) * 0x1.0p-24f;
  return v;
}

TokenId Sample(std::vector<float> logits, const SamplingParams& p, uint64_t seed = 0,
               uint64_t step = 0, std::vector<TokenId> prompt = {},
               std::vector<TokenId> output = {}) {
  SampleInput in{&p, seed, step, prompt, output};
  return SampleToken(logits, in).token;
}

SamplingParams Greedy() {
  SamplingParams p;
  p.temperature = 0.0f;
  return p;
}

TEST(SamplerTest, GreedyPicksArgmaxWhateverTheSeed) {
  std::vector<float> logits = {0.1f, -2.0f, 3.5f, 3.4f, 0.0f};
  for (uint64_t step = 0; step < 5; ++step) EXPECT_EQ(Sample(logits, Greedy(), 99, step), 2);
}

TEST(SamplerTest, GreedyTiesGoToTheLowestId) {
  EXPECT_EQ(Sample({1.0f, 5.0f, 2.0f, 5.0f, 5.0f}, Greedy()), 1);
  EXPECT_EQ(Sample({kInf, 0.0f, kInf}, Greedy()), 0);
  EXPECT_EQ(Sample({-kInf, -kInf, -kInf}, Greedy()), 0);
}

TEST(SamplerTest, NanLogitsAreNeverChosen) {
  EXPECT_EQ(Sample({kNan, 1.0f, kNan, 2.0f}, Greedy()), 3);
  SamplingParams p;  // temperature 1
  for (uint64_t step = 0; step < 200; ++step) {
    TokenId t = Sample({kNan, 1.0f, kNan, 1.5f}, p, 5, step);
    EXPECT_TRUE(t == 1 || t == 3) << t;
  }
  EXPECT_EQ(Sample({kNan, kNan}, p), 0);
  EXPECT_EQ(Sample({-kInf, -kInf, -kInf}, p), 0);
  EXPECT_EQ(Sample({-kInf, 0.0f, -kInf}, p), 1);
}

TEST(SamplerTest, PositiveInfinityWinsSampling) {
  SamplingParams p;
  for (uint64_t step = 0; step < 50; ++step) {
    TokenId t = Sample({1.0f, kInf, 2.0f, kInf}, p, 3, step);
    EXPECT_TRUE(t == 1 || t == 3) << t;
  }
}

TEST(SamplerTest, RepetitionPenaltyDividesPositiveAndMultipliesNegative) {
  SamplingParams p = Greedy();
  p.repetition_penalty = 1.2f;
  // 2.0 / 1.2 = 1.67 < 1.9.
  EXPECT_EQ(Sample({2.0f, 1.9f}, p, 0, 0, {0}), 1);
  // -1.0 * 1.2 = -1.2 < -1.1.
  EXPECT_EQ(Sample({-1.0f, -1.1f}, p, 0, 0, {}, {0}), 1);
  std::vector<float> logits = {2.0f, -1.0f, 0.5f};
  SampleInput in{&p, 0, 0, std::vector<TokenId>{0, 1}, {}};
  std::vector<TokenId> prompt = {0, 1};
  in.prompt_tokens = prompt;
  SampleToken(logits, in);
  EXPECT_FLOAT_EQ(logits[0], 2.0f / 1.2f);
  EXPECT_FLOAT_EQ(logits[1], -1.0f * 1.2f);
  EXPECT_EQ(logits[2], 0.5f);
}

TEST(SamplerTest, RepetitionPenaltyAppliesOncePerDistinctToken) {
  SamplingParams p = Greedy();
  p.repetition_penalty = 1.2f;
  // Once: 3 / 1.2 = 2.5 > 2. Three times would be 1.74 < 2.
  EXPECT_EQ(Sample({3.0f, 2.0f}, p, 0, 0, {0, 0, 0}, {0, 0}), 0);
}

TEST(SamplerTest, FrequencyCountsOutputOccurrencesAndPresenceCountsOnce) {
  SamplingParams p = Greedy();
  p.frequency_penalty = 0.5f;
  EXPECT_EQ(Sample({2.0f, 1.0f}, p, 0, 0, {}, {0}), 0);           // 1.5 > 1
  EXPECT_EQ(Sample({2.0f, 1.0f}, p, 0, 0, {}, {0, 0, 0}), 1);     // 0.5 < 1
  EXPECT_EQ(Sample({2.0f, 1.0f}, p, 0, 0, {0, 0, 0, 0}, {}), 0);  // prompt is not counted

  SamplingParams q = Greedy();
  q.presence_penalty = 0.8f;
  EXPECT_EQ(Sample({2.0f, 1.5f}, q, 0, 0, {}, {0}), 1);           // 1.2 < 1.5
  EXPECT_EQ(Sample({2.0f, 1.1f}, q, 0, 0, {}, {0, 0, 0, 0}), 0);  // still 1.2 > 1.1

  SamplingParams r = Greedy();
  r.repetition_penalty = 2.0f;
  r.presence_penalty = 0.5f;
  r.frequency_penalty = 0.25f;
  std::vector<float> logits = {4.0f, -1.0f, 1.0f, 1.0f};
  std::vector<TokenId> prompt = {2, 1};
  std::vector<TokenId> output = {0, 0, 1};
  SampleInput in{&r, 0, 0, prompt, output};
  SampleToken(logits, in);
  EXPECT_FLOAT_EQ(logits[0], 4.0f / 2.0f - 0.5f - 0.25f * 2);  // repetition first, then additive
  EXPECT_FLOAT_EQ(logits[1], -1.0f * 2.0f - 0.5f - 0.25f);
  EXPECT_FLOAT_EQ(logits[2], 0.5f);  // prompt only: repetition, no presence
  EXPECT_EQ(logits[3], 1.0f);
}

TEST(SamplerTest, ScratchMarksAreClearedBetweenCalls) {
  SamplingParams p = Greedy();
  p.frequency_penalty = 1.0f;
  SamplerScratch scratch;
  std::vector<TokenId> output = {0, 0};
  std::vector<float> a = {2.0f, 1.5f};
  SampleInput with{&p, 0, 0, {}, output};
  EXPECT_EQ(SampleToken(a, with, &scratch).token, 1);
  std::vector<float> b = {2.0f, 1.5f};
  SampleInput without{&p, 0, 0, {}, {}};
  EXPECT_EQ(SampleToken(b, without, &scratch).token, 0);
  EXPECT_EQ(b[0], 2.0f);
}

TEST(SamplerTest, SameSeedAndStepGiveTheSameTokenAndStepsVary) {
  std::vector<float> logits = RandomLogits(200, 7, -2.0f, 2.0f);
  SamplingParams p;
  p.top_p = 0.95f;
  SamplerScratch scratch;
  std::set<TokenId> seen;
  std::vector<TokenId> first;
  for (uint64_t step = 0; step < 100; ++step) {
    std::vector<float> row = logits;
    SampleInput in{&p, 1234, step, {}, {}};
    TokenId t = SampleToken(row, in, &scratch).token;
    first.push_back(t);
    seen.insert(t);
    EXPECT_EQ(Sample(logits, p, 1234, step), t) << "no scratch, step " << step;
    std::vector<float> row2 = logits;
    std::vector<float> float_scratch;
    EXPECT_EQ(SampleToken(row2, in, &float_scratch).token, t) << "float scratch, step " << step;
  }
  EXPECT_GT(seen.size(), 30u);
  int same = 0;
  for (uint64_t step = 0; step < 100; ++step) same += Sample(logits, p, 4321, step) == first[step];
  EXPECT_LT(same, 20);
}

TEST(SamplerTest, ConcurrentCallsMatchSequentialOnes) {
  std::vector<float> logits = RandomLogits(1000, 11, -3.0f, 3.0f);
  SamplingParams p;
  p.top_k = 40;
  p.min_p = 0.01f;
  constexpr uint64_t kSteps = 300;
  auto run = [&](uint64_t seed, std::vector<TokenId>* out) {
    SamplerScratch scratch;
    for (uint64_t step = 0; step < kSteps; ++step) {
      std::vector<float> row = logits;
      SampleInput in{&p, seed, step, {}, {}};
      out->push_back(SampleToken(row, in, &scratch).token);
    }
  };
  std::vector<TokenId> seq_a, seq_b, par_a, par_b;
  run(1, &seq_a);
  run(2, &seq_b);
  std::thread ta(run, 1, &par_a);
  std::thread tb(run, 2, &par_b);
  ta.join();
  tb.join();
  EXPECT_EQ(seq_a, par_a);
  EXPECT_EQ(seq_b, par_b);
}

TEST(SamplerTest, TopKOneAndMinPOneAndTinyTopPAreGreedy) {
  std::vector<float> logits = RandomLogits(500, 3, -1.0f, 1.0f);
  TokenId argmax = Sample(logits, Greedy());
  SamplingParams k1;
  k1.temperature = 5.0f;
  k1.top_k = 1;
  SamplingParams m1;
  m1.temperature = 5.0f;
  m1.min_p = 1.0f;
  SamplingParams p0;
  p0.temperature = 5.0f;
  p0.top_p = 1e-6f;
  for (uint64_t step = 0; step < 20; ++step) {
    EXPECT_EQ(Sample(logits, k1, 8, step), argmax);
    EXPECT_EQ(Sample(logits, m1, 8, step), argmax);
    EXPECT_EQ(Sample(logits, p0, 8, step), argmax);
  }
}

TEST(SamplerTest, TopKTiesAtTheBoundaryKeepLowerIds) {
  SamplingParams p;
  p.top_k = 2;
  for (uint64_t step = 0; step < 100; ++step) {
    TokenId t = Sample({1.0f, 3.0f, 1.0f, 1.0f}, p, 17, step);
    EXPECT_TRUE(t == 0 || t == 1) << t;
  }
}

TEST(SamplerTest, LargeVocabularyKeepsOnlyTheTopK) {
  std::vector<float> logits = RandomLogits(152000, 5, -10.0f, 10.0f);
  std::vector<float> sorted = logits;
  std::nth_element(sorted.begin(), sorted.begin() + 49, sorted.end(), std::greater<float>());
  float kth = sorted[49];
  SamplingParams p;
  p.top_k = 50;
  p.temperature = 2.0f;
  SamplerScratch scratch;
  for (uint64_t step = 0; step < 20; ++step) {
    std::vector<float> row = logits;
    SampleInput in{&p, 77, step, {}, {}};
    TokenId t = SampleToken(row, in, &scratch).token;
    EXPECT_GE(logits[t], kth);
  }
}

// log_softmax in double, the definition.
std::vector<double> LogSoftmax(const std::vector<float>& logits) {
  double max = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (float v : logits) sum += std::exp(v - max);
  std::vector<double> out;
  for (float v : logits) out.push_back(v - max - std::log(sum));
  return out;
}

TEST(SamplerTest, LogprobsAreOfTheRawLogitsBeforePenalties) {
  std::vector<float> raw = RandomLogits(3000, 21, -8.0f, 8.0f);
  std::vector<double> expected = LogSoftmax(raw);
  SamplingParams p;
  p.temperature = 0.7f;
  p.logprobs = 5;
  p.repetition_penalty = 1.5f;
  p.frequency_penalty = 1.0f;
  std::vector<TokenId> prompt = {1, 2, 3};
  std::vector<TokenId> output;
  for (uint64_t step = 0; step < 30; ++step) {
    std::vector<float> row = raw;
    SampleInput in{&p, 5, step, prompt, output};
    SampleOutput out = SampleToken(row, in);
    EXPECT_NEAR(out.logprob, expected[out.token], 1e-5);
    ASSERT_EQ(out.top_logprobs.size(), 5u);
    std::vector<TokenId> order(raw.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<TokenId>(i);
    std::stable_sort(order.begin(), order.end(),
                     [&](TokenId a, TokenId b) { return raw[a] > raw[b]; });
    for (size_t i = 0; i < 5; ++i) {
      EXPECT_EQ(out.top_logprobs[i].token, order[i]);
      EXPECT_NEAR(out.top_logprobs[i].logprob, expected[order[i]], 1e-5);
    }
    output.push_back(out.token);  // penalized tokens must still report raw logprobs
  }
}

TEST(SamplerTest, LogprobsZeroAndMinusOne) {
  std::vector<float> raw = {1.0f, 2.0f, 3.0f};
  std::vector<double> expected = LogSoftmax(raw);
  SamplingParams p = Greedy();
  p.logprobs = 0;
  std::vector<float> row = raw;
  SampleOutput out = SampleToken(row, {&p, 0, 0, {}, {}});
  EXPECT_EQ(out.token, 2);
  EXPECT_NEAR(out.logprob, expected[2], 1e-6);
  EXPECT_TRUE(out.top_logprobs.empty());
  p.logprobs = -1;
  row = raw;
  out = SampleToken(row, {&p, 0, 0, {}, {}});
  EXPECT_EQ(out.logprob, 0.0f);
  EXPECT_TRUE(out.top_logprobs.empty());
}

TEST(SamplerTest, TopLogprobsOrderTiesByIdAndClampToVocab) {
  std::vector<float> logits = {0.5f, 2.0f, 1.0f, 2.0f, 1.0f, -3.0f};
  std::vector<double> expected = LogSoftmax(logits);
  std::vector<TokenLogprob> top = TopLogprobs(logits, 4);
  std::vector<TokenId> ids;
  for (const TokenLogprob& t : top) ids.push_back(t.token);
  EXPECT_EQ(ids, (std::vector<TokenId>{1, 3, 2, 4}));
  for (const TokenLogprob& t : top) EXPECT_NEAR(t.logprob, expected[t.token], 1e-6);
  EXPECT_EQ(TopLogprobs(logits, 100).size(), logits.size());
  EXPECT_TRUE(TopLogprobs(logits, 0).empty());
  EXPECT_NEAR(LogSoftmaxAt(logits, 5), expected[5], 1e-6);
}

TEST(SamplerTest, TopLogprobsLargeNMatchesTheSmallNPath) {
  std::vector<float> logits = RandomLogits(500, 9, -4.0f, 4.0f);
  logits[10] = logits[20] = logits[30];                       // ties
  std::vector<TokenLogprob> big = TopLogprobs(logits, 200);   // partial_sort path
  std::vector<TokenLogprob> small = TopLogprobs(logits, 60);  // insertion path
  ASSERT_EQ(big.size(), 200u);
  for (size_t i = 0; i < small.size(); ++i) {
    EXPECT_EQ(big[i].token, small[i].token) << i;
    EXPECT_EQ(big[i].logprob, small[i].logprob) << i;
  }
  for (size_t i = 1; i < big.size(); ++i) {
    EXPECT_TRUE(big[i - 1].logprob > big[i].logprob ||
                (big[i - 1].logprob == big[i].logprob && big[i - 1].token < big[i].token));
  }
}

}  // namespace
}  // namespace tandem
