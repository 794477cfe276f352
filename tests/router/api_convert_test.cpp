// api_convert: proto <-> Tandem types. Defaults of unset fields, prompt rules, status mapping,
// and the stream's token, completion and stats messages.
#include <gtest/gtest.h>

#include "router/api_convert.h"

namespace tandem {
namespace {

TEST(ApiConvertTest, UnsetSamplingFieldsKeepTheEngineDefaults) {
  const SamplingParams defaults;
  const SamplingParams s = SamplingFromProto(v1::SamplingParams());
  EXPECT_EQ(s.temperature, defaults.temperature);
  EXPECT_EQ(s.top_k, defaults.top_k);
  EXPECT_EQ(s.top_p, defaults.top_p);
  EXPECT_EQ(s.min_p, defaults.min_p);
  EXPECT_EQ(s.repetition_penalty, defaults.repetition_penalty);
  EXPECT_EQ(s.presence_penalty, defaults.presence_penalty);
  EXPECT_EQ(s.frequency_penalty, defaults.frequency_penalty);
  EXPECT_FALSE(s.seed.has_value());
  EXPECT_EQ(s.max_tokens, defaults.max_tokens);
  EXPECT_EQ(s.min_tokens, defaults.min_tokens);
  EXPECT_EQ(s.ignore_eos, defaults.ignore_eos);
  EXPECT_TRUE(s.stop_token_ids.empty());
  EXPECT_EQ(s.logprobs, defaults.logprobs);
}

TEST(ApiConvertTest, SetSamplingFieldsAreCopied_IncludingExplicitZeros) {
  v1::SamplingParams p;
  p.set_temperature(0.0f);  // explicit 0 (greedy) differs from unset (1)
  p.set_top_k(5);
  p.set_top_p(0.5f);
  p.set_min_p(0.1f);
  p.set_repetition_penalty(1.2f);
  p.set_presence_penalty(-0.5f);
  p.set_frequency_penalty(0.25f);
  p.set_seed(1ULL << 40);
  p.set_max_tokens(7);
  p.set_min_tokens(2);
  p.set_ignore_eos(true);
  p.add_stop_token_ids(3);
  p.add_stop_token_ids(9);
  p.set_logprobs(0);
  const SamplingParams s = SamplingFromProto(p);
  EXPECT_EQ(s.temperature, 0.0f);
  EXPECT_EQ(s.top_k, 5);
  EXPECT_EQ(s.top_p, 0.5f);
  EXPECT_EQ(s.min_p, 0.1f);
  EXPECT_EQ(s.repetition_penalty, 1.2f);
  EXPECT_EQ(s.presence_penalty, -0.5f);
  EXPECT_EQ(s.frequency_penalty, 0.25f);
  ASSERT_TRUE(s.seed.has_value());
  EXPECT_EQ(*s.seed, 1ULL << 40);
  EXPECT_EQ(s.max_tokens, 7);
  EXPECT_EQ(s.min_tokens, 2);
  EXPECT_TRUE(s.ignore_eos);
  EXPECT_EQ(s.stop_token_ids, (std::vector<TokenId>{3, 9}));
  EXPECT_EQ(s.logprobs, 0);
}

TEST(ApiConvertTest, RequestFromProtoTakesIdsHintsAndFallbackId) {
  v1::GenerateRequest p;
  p.add_prompt_token_ids(4);
  p.add_prompt_token_ids(-2);  // range checks belong to the engine
  p.set_priority(-3);
  p.set_tenant("acme");
  p.set_ttft_slo_ms(250);
  p.set_tpot_slo_ms(40);
  p.mutable_sampling()->set_max_tokens(3);
  auto r = RequestFromProto(p, nullptr, "fallback-1");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->request_id, "fallback-1");
  EXPECT_EQ(r->prompt_token_ids, (std::vector<TokenId>{4, -2}));
  EXPECT_EQ(r->priority, -3);
  EXPECT_EQ(r->tenant, "acme");
  EXPECT_EQ(r->ttft_slo_ms, 250.0);
  EXPECT_EQ(r->tpot_slo_ms, 40.0);
  EXPECT_EQ(r->sampling.max_tokens, 3);

  p.set_request_id("mine");
  p.clear_ttft_slo_ms();
  r = RequestFromProto(p, nullptr, "fallback-2");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->request_id, "mine");
  EXPECT_FALSE(r->ttft_slo_ms.has_value());
}

TEST(ApiConvertTest, PromptRulesAreInvalidArgumentsThatSayWhatToDo) {
  auto expect_invalid = [](const v1::GenerateRequest& p, const std::string& needle) {
    auto r = RequestFromProto(p, nullptr, "id");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
  };
  v1::GenerateRequest none;
  expect_invalid(none, "prompt is empty");
  v1::GenerateRequest both;
  both.add_prompt_token_ids(1);
  both.set_text("hi");
  expect_invalid(both, "not both");
  v1::GenerateRequest text;
  text.set_text("hello");
  expect_invalid(text, "prompt_token_ids");  // no tokenizer: says what to send instead
  v1::GenerateRequest long_id;
  long_id.add_prompt_token_ids(1);
  long_id.set_request_id(std::string(kMaxRequestIdLength + 1, 'x'));
  expect_invalid(long_id, "request_id");
  long_id.set_request_id(std::string(kMaxRequestIdLength, 'x'));
  EXPECT_TRUE(RequestFromProto(long_id, nullptr, "id").ok());
}

TEST(ApiConvertTest, StatusCodesMapOneToOneOntoGrpc) {
  EXPECT_TRUE(ToGrpcStatus(OkStatus()).ok());
  for (int code = 1; code <= 15; ++code) {
    const Status s(static_cast<StatusCode>(code), "message " + std::to_string(code));
    const grpc::Status g = ToGrpcStatus(s);
    EXPECT_EQ(static_cast<int>(g.error_code()), code);
    EXPECT_EQ(g.error_message(), s.message());
  }
  EXPECT_EQ(ToGrpcStatus(ResourceExhaustedError("x")).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(ToGrpcStatus(UnavailableError("x")).error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST(ApiConvertTest, TokensLogprobsAndCompletion) {
  RequestOutput out;
  out.request_id = "r";
  TokenOutput a;
  a.token = 11;
  a.logprob = -0.5f;
  a.top_logprobs = {{11, -0.5f}, {12, -1.5f}};
  TokenOutput b;
  b.token = 13;
  b.logprob = -2.0f;
  out.new_tokens = {a, b};
  v1::GenerateResponse plain;
  AppendTokens(out, /*with_logprobs=*/false, &plain);
  EXPECT_EQ(plain.token_ids_size(), 2);
  EXPECT_EQ(plain.logprobs_size(), 0);
  v1::GenerateResponse with;
  AppendTokens(out, /*with_logprobs=*/true, &with);
  ASSERT_EQ(with.logprobs_size(), 2);
  EXPECT_EQ(with.logprobs(0).token_id(), 11);
  EXPECT_EQ(with.logprobs(0).logprob(), -0.5f);
  ASSERT_EQ(with.logprobs(0).top_size(), 2);
  EXPECT_EQ(with.logprobs(0).top(1).token_id(), 12);
  EXPECT_EQ(with.logprobs(1).top_size(), 0);

  out.finished = true;
  out.finish_reason = FinishReason::kStop;
  out.num_prompt_tokens = 20;
  out.num_cached_tokens = 16;
  out.num_output_tokens = 2;
  out.queue_ms = 3;
  out.ttft_ms = 10;
  out.tpot_ms = 2;
  v1::Completion c;
  FillCompletion(out, 12.5, &c);
  EXPECT_EQ(c.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(c.usage().prompt_tokens(), 20);
  EXPECT_EQ(c.usage().cached_tokens(), 16);
  EXPECT_EQ(c.usage().completion_tokens(), 2);
  EXPECT_EQ(c.timings().queue_ms(), 3);
  EXPECT_EQ(c.timings().prefill_ms(), 7);
  EXPECT_EQ(c.timings().ttft_ms(), 10);
  EXPECT_EQ(c.timings().tpot_ms(), 2);
  EXPECT_EQ(c.timings().e2e_ms(), 12.5);
  EXPECT_EQ(c.timings().transfer_ms(), 0);

  EXPECT_EQ(FinishReasonToProto(FinishReason::kLength), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(FinishReasonToProto(FinishReason::kAbort), v1::FINISH_REASON_ABORT);
  EXPECT_EQ(FinishReasonToProto(FinishReason::kNone), v1::FINISH_REASON_UNSPECIFIED);
}

TEST(ApiConvertTest, StatsCarryTheKvPool) {
  EngineLoopStats stats;
  stats.engine.blocks.num_total = 10;
  stats.engine.blocks.num_free = 6;
  stats.engine.blocks.num_cached = 3;
  stats.engine.blocks.num_in_use = 1;
  stats.engine.blocks.prefix_queries_tokens = 100;
  stats.engine.blocks.prefix_hit_tokens = 40;
  stats.engine.num_waiting = 2;
  stats.engine.num_running = 1;
  stats.engine.num_steps = 77;
  stats.engine.num_preemptions = 4;
  stats.num_live = 3;
  stats.accepting = false;
  v1::GetStatsResponse r;
  FillStats(stats, 5, &r);
  EXPECT_EQ(r.kv_blocks().total(), 10);
  EXPECT_EQ(r.kv_blocks().free(), 6);
  EXPECT_EQ(r.kv_blocks().cached(), 3);
  EXPECT_EQ(r.kv_blocks().in_use(), 1);
  EXPECT_EQ(r.kv_blocks().prefix_query_tokens(), 100);
  EXPECT_EQ(r.kv_blocks().prefix_hit_tokens(), 40);
  EXPECT_EQ(r.num_waiting(), 2);
  EXPECT_EQ(r.num_running(), 1);
  EXPECT_EQ(r.num_live_requests(), 3);
  EXPECT_EQ(r.num_steps(), 77);
  EXPECT_EQ(r.num_preemptions(), 4);
  EXPECT_FALSE(r.accepting());
  EXPECT_EQ(r.num_open_streams(), 5);
}

}  // namespace
}  // namespace tandem
