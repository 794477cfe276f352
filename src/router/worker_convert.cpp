#include "router/worker_convert.h"

#include "router/api_convert.h"

namespace tandem {

void SamplingToProto(const SamplingParams& s, v1::SamplingParams* p) {
  p->set_temperature(s.temperature);
  p->set_top_k(s.top_k);
  p->set_top_p(s.top_p);
  p->set_min_p(s.min_p);
  p->set_repetition_penalty(s.repetition_penalty);
  p->set_presence_penalty(s.presence_penalty);
  p->set_frequency_penalty(s.frequency_penalty);
  if (s.seed) p->set_seed(*s.seed);
  p->set_max_tokens(s.max_tokens);
  p->set_min_tokens(s.min_tokens);
  p->set_ignore_eos(s.ignore_eos);
  for (TokenId id : s.stop_token_ids) p->add_stop_token_ids(id);
  p->set_logprobs(s.logprobs);
}

void RequestToWorkerProto(const Request& r, v1::WorkerRequest* p) {
  p->set_request_id(r.request_id);
  for (TokenId id : r.prompt_token_ids) p->add_prompt_token_ids(id);
  SamplingToProto(r.sampling, p->mutable_sampling());
  p->set_priority(r.priority);
  p->set_tenant(r.tenant);
  if (r.ttft_slo_ms) p->set_ttft_slo_ms(*r.ttft_slo_ms);
  if (r.tpot_slo_ms) p->set_tpot_slo_ms(*r.tpot_slo_ms);
}

Request RequestFromWorkerProto(const v1::WorkerRequest& p) {
  Request r;
  r.request_id = p.request_id();
  r.prompt_token_ids.assign(p.prompt_token_ids().begin(), p.prompt_token_ids().end());
  r.sampling = SamplingFromProto(p.sampling());
  r.priority = p.priority();
  r.tenant = p.tenant();
  if (p.has_ttft_slo_ms()) r.ttft_slo_ms = p.ttft_slo_ms();
  if (p.has_tpot_slo_ms()) r.tpot_slo_ms = p.tpot_slo_ms();
  r.arrival_time = Clock::now();
  return r;
}

FinishReason FinishReasonFromProto(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_LENGTH: return FinishReason::kLength;
    case v1::FINISH_REASON_STOP: return FinishReason::kStop;
    case v1::FINISH_REASON_ABORT: return FinishReason::kAbort;
    default: return FinishReason::kNone;
  }
}

void OutputToWorkerProto(const RequestOutput& out, bool with_logprobs, v1::WorkerOutput* p) {
  v1::GenerateResponse tokens;
  AppendTokens(out, with_logprobs, &tokens);
  *p->mutable_token_ids() = tokens.token_ids();
  *p->mutable_logprobs() = tokens.logprobs();
  p->set_finished(out.finished);
  p->set_finish_reason(FinishReasonToProto(out.finish_reason));
  p->set_num_prompt_tokens(out.num_prompt_tokens);
  p->set_num_cached_tokens(out.num_cached_tokens);
  p->set_num_output_tokens(out.num_output_tokens);
  p->set_queue_ms(out.queue_ms);
  p->set_ttft_ms(out.ttft_ms);
  p->set_tpot_ms(out.tpot_ms);
}

RequestOutput OutputFromWorkerProto(const std::string& request_id, const v1::WorkerOutput& p) {
  RequestOutput out;
  out.request_id = request_id;
  for (int i = 0; i < p.token_ids_size(); ++i) {
    TokenOutput t;
    t.token = p.token_ids(i);
    if (i < p.logprobs_size()) {
      t.logprob = p.logprobs(i).logprob();
      for (const auto& top : p.logprobs(i).top()) t.top_logprobs.emplace_back(top.token_id(), top.logprob());
    }
    out.new_tokens.push_back(std::move(t));
  }
  out.finished = p.finished();
  out.finish_reason = FinishReasonFromProto(p.finish_reason());
  out.num_prompt_tokens = p.num_prompt_tokens();
  out.num_cached_tokens = p.num_cached_tokens();
  out.num_output_tokens = p.num_output_tokens();
  out.queue_ms = p.queue_ms();
  out.ttft_ms = p.ttft_ms();
  out.tpot_ms = p.tpot_ms();
  return out;
}

}  // namespace tandem
