#include "tandem/sampling_params.h"

#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace tandem {
namespace {

constexpr int64_t kVocab = 1000;
constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(SamplingParamsTest, DefaultsAndBoundsAreValid) {
  EXPECT_TRUE(SamplingParams{}.Validate(kVocab).ok());
  SamplingParams p;
  p.temperature = 0.0f;
  p.top_k = static_cast<int32_t>(kVocab);
  p.top_p = 1e-6f;
  p.min_p = 1.0f;
  p.repetition_penalty = kMaxRepetitionPenalty;
  p.presence_penalty = -kMaxPenalty;
  p.frequency_penalty = kMaxPenalty;
  p.max_tokens = 1;
  p.min_tokens = 1;
  p.stop_token_ids = {0, static_cast<TokenId>(kVocab - 1)};
  p.logprobs = kMaxLogprobs;
  EXPECT_TRUE(p.Validate(kVocab).ok()) << p.Validate(kVocab).ToString();
  p.temperature = kMaxTemperature;
  p.top_k = -1;
  p.min_p = 0.0f;
  p.logprobs = -1;
  p.min_tokens = 0;
  EXPECT_TRUE(p.Validate(kVocab).ok()) << p.Validate(kVocab).ToString();
}

struct BadCase {
  std::string label;
  std::function<void(SamplingParams&)> mutate;
  std::vector<std::string> expected;  // substrings of the message
};

TEST(SamplingParamsTest, EachBadValueIsNamedWithRangeAndValue) {
  const std::string temp_range = "temperature must be a finite number in [0, 100]";
  const std::string rep_range = "repetition_penalty must be a finite number in (0, 10]";
  const std::vector<BadCase> cases = {
      {"temperature nan", [](SamplingParams& p) { p.temperature = kNan; }, {temp_range, "got nan"}},
      {"temperature -nan",
       [](SamplingParams& p) { p.temperature = -kNan; },
       {temp_range, "got nan"}},
      {"temperature inf", [](SamplingParams& p) { p.temperature = kInf; }, {temp_range, "got inf"}},
      {"temperature neg",
       [](SamplingParams& p) { p.temperature = -0.5f; },
       {temp_range, "got -0.5"}},
      {"temperature big",
       [](SamplingParams& p) { p.temperature = 100.5f; },
       {temp_range, "got 100.5"}},
      {"top_k -2", [](SamplingParams& p) { p.top_k = -2; }, {"top_k", "[1, 1000]", "got -2"}},
      {"top_k > vocab",
       [](SamplingParams& p) { p.top_k = 1001; },
       {"top_k", "[1, 1000]", "got 1001"}},
      {"top_p 0", [](SamplingParams& p) { p.top_p = 0.0f; }, {"top_p", "(0, 1]", "got 0"}},
      {"top_p nan", [](SamplingParams& p) { p.top_p = kNan; }, {"top_p", "(0, 1]", "got nan"}},
      {"top_p > 1", [](SamplingParams& p) { p.top_p = 1.5f; }, {"top_p", "(0, 1]", "got 1.5"}},
      {"top_p neg", [](SamplingParams& p) { p.top_p = -0.1f; }, {"top_p", "(0, 1]", "got -0.1"}},
      {"min_p neg", [](SamplingParams& p) { p.min_p = -0.25f; }, {"min_p", "[0, 1]", "got -0.25"}},
      {"min_p nan", [](SamplingParams& p) { p.min_p = kNan; }, {"min_p", "[0, 1]", "got nan"}},
      {"min_p inf", [](SamplingParams& p) { p.min_p = kInf; }, {"min_p", "[0, 1]", "got inf"}},
      {"rep 0", [](SamplingParams& p) { p.repetition_penalty = 0.0f; }, {rep_range, "got 0"}},
      {"rep neg", [](SamplingParams& p) { p.repetition_penalty = -1.0f; }, {rep_range, "got -1"}},
      {"rep big", [](SamplingParams& p) { p.repetition_penalty = 11.0f; }, {rep_range, "got 11"}},
      {"rep nan", [](SamplingParams& p) { p.repetition_penalty = kNan; }, {rep_range, "got nan"}},
      {"rep inf", [](SamplingParams& p) { p.repetition_penalty = kInf; }, {rep_range, "got inf"}},
      {"presence big",
       [](SamplingParams& p) { p.presence_penalty = 2.5f; },
       {"presence_penalty must be a finite number in [-2, 2]", "got 2.5"}},
      {"presence nan",
       [](SamplingParams& p) { p.presence_penalty = kNan; },
       {"presence_penalty", "[-2, 2]", "got nan"}},
      {"presence -inf",
       [](SamplingParams& p) { p.presence_penalty = -kInf; },
       {"presence_penalty", "[-2, 2]", "got -inf"}},
      {"frequency small",
       [](SamplingParams& p) { p.frequency_penalty = -3.0f; },
       {"frequency_penalty must be a finite number in [-2, 2]", "got -3"}},
      {"frequency nan",
       [](SamplingParams& p) { p.frequency_penalty = kNan; },
       {"frequency_penalty", "[-2, 2]", "got nan"}},
      {"frequency inf",
       [](SamplingParams& p) { p.frequency_penalty = kInf; },
       {"frequency_penalty", "got inf"}},
      {"max_tokens 0",
       [](SamplingParams& p) { p.max_tokens = 0; },
       {"max_tokens must be >= 1", "got 0"}},
      {"max_tokens neg", [](SamplingParams& p) { p.max_tokens = -5; }, {"max_tokens", "got -5"}},
      {"min_tokens neg",
       [](SamplingParams& p) { p.min_tokens = -1; },
       {"min_tokens must be in [0, max_tokens = 16]", "got -1"}},
      {"min_tokens > max",
       [](SamplingParams& p) { p.min_tokens = 17; },
       {"min_tokens", "[0, max_tokens = 16]", "got 17"}},
      {"stop id neg",
       [](SamplingParams& p) {
         p.stop_token_ids = {5, -1};
       },
       {"stop_token_ids[1]", "[0, 1000)", "got -1"}},
      {"stop id = vocab",
       [](SamplingParams& p) { p.stop_token_ids = {1000}; },
       {"stop_token_ids[0]", "[0, 1000)", "got 1000"}},
      {"logprobs -2",
       [](SamplingParams& p) { p.logprobs = -2; },
       {"logprobs must be in [-1, 20]", "got -2"}},
      {"logprobs 21",
       [](SamplingParams& p) { p.logprobs = 21; },
       {"logprobs", "[-1, 20]", "got 21"}},
  };
  for (const BadCase& c : cases) {
    SamplingParams p;
    c.mutate(p);
    Status s = p.Validate(kVocab);
    ASSERT_FALSE(s.ok()) << c.label;
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << c.label;
    for (const std::string& want : c.expected) {
      EXPECT_NE(s.message().find(want), std::string::npos)
          << c.label << ": '" << s.message() << "' lacks '" << want << "'";
    }
    EXPECT_EQ(s.message().find("-nan"), std::string::npos) << c.label << ": " << s.message();
  }
}

TEST(SamplingParamsTest, NonPositiveVocabIsAnError) {
  Status s = SamplingParams{}.Validate(0);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("vocab_size"), std::string::npos);
}

}  // namespace
}  // namespace tandem
