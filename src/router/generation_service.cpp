#include "router/generation_service.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <optional>
#include <utility>

#include "router/api_convert.h"
#include "router/request_stream.h"
#include "tokenizer/incremental_decoder.h"

namespace tandem {
namespace {

bool DeadlinePassed(const grpc::ServerContext& context) {
  return context.deadline() <= std::chrono::system_clock::now();
}

}  // namespace

GenerationService::GenerationService(Executor& executor, ServedModel model,
                                     GenerationServiceOptions options)
    : executor_(executor),
      model_(std::move(model)),
      options_(options),
      id_prefix_(fmt::format("gen-{:x}-", Clock::now().time_since_epoch().count())) {}

std::string GenerationService::NextRequestId() { return id_prefix_ + std::to_string(next_id_++); }

grpc::Status GenerationService::CheckModel(const std::string& requested) const {
  if (requested.empty() || requested == model_.id) return grpc::Status::OK;
  return grpc::Status(grpc::StatusCode::NOT_FOUND,
                      "model '" + requested + "' is not served here; this server serves '" +
                          model_.id + "' (see ListModels), or leave model empty");
}

grpc::Status GenerationService::Generate(grpc::ServerContext* context,
                                         const v1::GenerateRequest* proto,
                                         grpc::ServerWriter<v1::GenerateResponse>* writer) {
  OpenStreamScope open(num_open_streams_);
  if (grpc::Status s = CheckModel(proto->model()); !s.ok()) return s;
  StatusOr<Request> request = RequestFromProto(*proto, model_.tokenizer, NextRequestId());
  if (!request.ok()) return ToGrpcStatus(request.status());
  const std::string id = request->request_id;
  const Clock::time_point arrival = request->arrival_time;
  const bool with_logprobs = request->sampling.logprobs >= 0;
  std::optional<IncrementalDecoder> decoder;
  if (model_.tokenizer != nullptr && (!proto->has_stream_text() || proto->stream_text())) {
    decoder.emplace(*model_.tokenizer,
                    !proto->has_skip_special_tokens() || proto->skip_special_tokens());
  }
  if (DeadlinePassed(*context)) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                        "the deadline passed before request '" + id + "' was admitted");
  }

  auto stream = std::make_shared<RequestStream>(options_.max_queued_outputs);
  Status submitted = executor_.Submit(std::move(request).value(),
                                      [stream](RequestOutput out) { stream->Push(std::move(out)); });
  if (!submitted.ok()) {
    spdlog::debug("request {} rejected: {}", id, submitted.ToString());
    return ToGrpcStatus(submitted);
  }

  // Bounded by the executor's contract: a final output always comes (or the client leaves).
  for (;;) {
    std::vector<RequestOutput> outputs = stream->Pop(options_.poll_interval);
    if (context->IsCancelled() || DeadlinePassed(*context)) {
      executor_.Cancel(id);
      if (DeadlinePassed(*context)) {
        return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                            "request '" + id + "' was aborted: its deadline passed");
      }
      return grpc::Status(grpc::StatusCode::CANCELLED, "request '" + id + "' was cancelled");
    }
    if (outputs.empty()) continue;
    RequestOutput out = std::move(outputs.front());
    for (size_t i = 1; i < outputs.size(); ++i) MergeOutputs(out, std::move(outputs[i]));

    v1::GenerateResponse response;
    response.set_request_id(id);
    AppendTokens(out, with_logprobs, &response);
    if (decoder) {
      std::string text;
      for (const TokenOutput& t : out.new_tokens) text += decoder->Step(t.token);
      if (out.finished) text += decoder->Flush();
      response.set_text(std::move(text));
    }
    if (!out.finished) {
      if (!writer->Write(response)) {
        executor_.Cancel(id);
        return grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped reading request '" +
                                                             id + "'");
      }
      continue;
    }
    if (out.finish_reason == FinishReason::kError) {
      spdlog::error("request {} failed: {}", id, out.status.ToString());
      return ToGrpcStatus(out.status);
    }
    if (out.finish_reason == FinishReason::kAbort) {
      // Not the client's doing (checked above): the server aborted it while shutting down.
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "the server shut down before request '" + id + "' finished (" +
                              std::to_string(out.num_output_tokens) +
                              " tokens were generated); retry on another replica");
    }
    FillCompletion(out, MillisSince(arrival), response.mutable_completion());
    writer->Write(response);  // false: the client left; the request is over either way
    return grpc::Status::OK;
  }
}

grpc::Status GenerationService::Tokenize(grpc::ServerContext* context,
                                         const v1::TokenizeRequest* request,
                                         v1::TokenizeResponse* response) {
  if (grpc::Status s = CheckModel(request->model()); !s.ok()) return s;
  if (model_.tokenizer == nullptr) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "model '" + model_.id + "' ships no tokenizer (tokenizer.json); tokenize "
                        "on the client and send prompt_token_ids");
  }
  EncodeOptions options;
  options.add_special_tokens = !request->has_add_special_tokens() || request->add_special_tokens();
  options.parse_special = false;
  for (int32_t id : model_.tokenizer->Encode(request->text(), options)) response->add_token_ids(id);
  return grpc::Status::OK;
}

grpc::Status GenerationService::ListModels(grpc::ServerContext* context,
                                           const v1::ListModelsRequest* request,
                                           v1::ListModelsResponse* response) {
  v1::ModelInfo* info = response->add_models();
  info->set_id(model_.id);
  info->set_path(model_.path);
  info->set_architecture(model_.architecture);
  info->set_vocab_size(model_.vocab_size);
  info->set_max_model_len(model_.max_model_len);
  info->set_has_tokenizer(model_.tokenizer != nullptr);
  for (int64_t id : model_.eos_token_ids) info->add_eos_token_ids(static_cast<int32_t>(id));
  info->set_backend(model_.backend);
  return grpc::Status::OK;
}

grpc::Status AdminService::GetStats(grpc::ServerContext* context, const v1::GetStatsRequest* request,
                                    v1::GetStatsResponse* response) {
  FillStats(executor_.Stats(), generation_.num_open_streams(), response);
  return grpc::Status::OK;
}

}  // namespace tandem
