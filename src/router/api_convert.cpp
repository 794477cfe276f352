#include "router/api_convert.h"

#include <utility>

namespace tandem {

grpc::Status ToGrpcStatus(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), status.message());
}

SamplingParams SamplingFromProto(const v1::SamplingParams& p) {
  SamplingParams s;
  if (p.has_temperature()) s.temperature = p.temperature();
  if (p.has_top_k()) s.top_k = p.top_k();
  if (p.has_top_p()) s.top_p = p.top_p();
  if (p.has_min_p()) s.min_p = p.min_p();
  if (p.has_repetition_penalty()) s.repetition_penalty = p.repetition_penalty();
  if (p.has_presence_penalty()) s.presence_penalty = p.presence_penalty();
  if (p.has_frequency_penalty()) s.frequency_penalty = p.frequency_penalty();
  if (p.has_seed()) s.seed = p.seed();
  if (p.has_max_tokens()) s.max_tokens = p.max_tokens();
  if (p.has_min_tokens()) s.min_tokens = p.min_tokens();
  s.ignore_eos = p.ignore_eos();
  s.stop_token_ids.assign(p.stop_token_ids().begin(), p.stop_token_ids().end());
  if (p.has_logprobs()) s.logprobs = p.logprobs();
  return s;
}

StatusOr<Request> RequestFromProto(const v1::GenerateRequest& proto, const Tokenizer* tokenizer,
                                   const std::string& fallback_id) {
  if (proto.request_id().size() > kMaxRequestIdLength) {
    return InvalidArgumentError("request_id has " + std::to_string(proto.request_id().size()) +
                                " characters; at most " + std::to_string(kMaxRequestIdLength) +
                                " are allowed");
  }
  const bool has_ids = proto.prompt_token_ids_size() > 0;
  const bool has_text = !proto.text().empty();
  if (has_ids && has_text) {
    return InvalidArgumentError("give the prompt as prompt_token_ids or as text, not both");
  }
  if (!has_ids && !has_text) {
    return InvalidArgumentError("the prompt is empty: set prompt_token_ids or text");
  }
  Request request;
  request.request_id = proto.request_id().empty() ? fallback_id : proto.request_id();
  if (has_ids) {
    request.prompt_token_ids.assign(proto.prompt_token_ids().begin(), proto.prompt_token_ids().end());
  } else {
    if (tokenizer == nullptr) {
      return InvalidArgumentError(
          "this server's model ships no tokenizer, so it cannot take a text prompt; send "
          "prompt_token_ids instead");
    }
    EncodeOptions options;
    options.add_special_tokens = !proto.has_add_special_tokens() || proto.add_special_tokens();
    options.parse_special = false;  // user text: "<|eot_id|>" typed by a person stays text
    request.prompt_token_ids = tokenizer->Encode(proto.text(), options);
  }
  request.sampling = SamplingFromProto(proto.sampling());
  if (proto.has_priority()) request.priority = proto.priority();
  request.tenant = proto.tenant();
  if (proto.has_ttft_slo_ms()) request.ttft_slo_ms = proto.ttft_slo_ms();
  if (proto.has_tpot_slo_ms()) request.tpot_slo_ms = proto.tpot_slo_ms();
  request.arrival_time = Clock::now();
  return request;
}

v1::FinishReason FinishReasonToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case FinishReason::kStop: return v1::FINISH_REASON_STOP;
    case FinishReason::kAbort: return v1::FINISH_REASON_ABORT;
    case FinishReason::kNone:
    case FinishReason::kError: break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void AppendTokens(const RequestOutput& output, bool with_logprobs, v1::GenerateResponse* response) {
  for (const TokenOutput& t : output.new_tokens) {
    response->add_token_ids(t.token);
    if (!with_logprobs) continue;
    v1::TokenLogprobs* lp = response->add_logprobs();
    lp->set_token_id(t.token);
    lp->set_logprob(t.logprob);
    for (const auto& [id, logprob] : t.top_logprobs) {
      v1::TopLogprob* top = lp->add_top();
      top->set_token_id(id);
      top->set_logprob(logprob);
    }
  }
}

void FillCompletion(const RequestOutput& output, double e2e_ms, v1::Completion* completion) {
  completion->set_finish_reason(FinishReasonToProto(output.finish_reason));
  v1::Usage* usage = completion->mutable_usage();
  usage->set_prompt_tokens(output.num_prompt_tokens);
  usage->set_completion_tokens(output.num_output_tokens);
  usage->set_cached_tokens(output.num_cached_tokens);
  v1::Timings* timings = completion->mutable_timings();
  timings->set_queue_ms(output.queue_ms);
  timings->set_ttft_ms(output.ttft_ms);
  timings->set_prefill_ms(output.ttft_ms > 0 ? output.ttft_ms - output.queue_ms : 0.0);
  timings->set_tpot_ms(output.tpot_ms);
  timings->set_e2e_ms(e2e_ms);
  timings->set_transfer_ms(output.transfer_ms);  // 0 when colocated: no KV moves
}

void FillStats(const EngineLoopStats& stats, int32_t num_open_streams, v1::GetStatsResponse* out) {
  out->set_num_waiting(static_cast<int32_t>(stats.engine.num_waiting));
  out->set_num_running(static_cast<int32_t>(stats.engine.num_running));
  out->set_num_live_requests(stats.num_live);
  v1::KvBlockStats* kv = out->mutable_kv_blocks();
  kv->set_total(stats.engine.blocks.num_total);
  kv->set_free(stats.engine.blocks.num_free);
  kv->set_cached(stats.engine.blocks.num_cached);
  kv->set_in_use(stats.engine.blocks.num_in_use);
  kv->set_prefix_query_tokens(stats.engine.blocks.prefix_queries_tokens);
  kv->set_prefix_hit_tokens(stats.engine.blocks.prefix_hit_tokens);
  out->set_num_steps(stats.engine.num_steps);
  out->set_num_preemptions(stats.engine.num_preemptions);
  out->set_accepting(stats.accepting);
  out->set_num_open_streams(num_open_streams);
  out->set_num_queued_prompt_tokens(stats.num_queued_prompt_tokens);
  out->set_prefill_tokens_per_s(stats.prefill_tokens_per_s);
}

}  // namespace tandem
