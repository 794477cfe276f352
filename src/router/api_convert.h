// api_convert: the public API's messages (proto/tandem/v1) <-> Tandem's types. Pure functions, no
// I/O; the gRPC service (generation_service.h) composes them.
#pragma once

#include <grpcpp/support/status.h>

#include <cstdint>
#include <string>

#include "tandem/v1/admin.pb.h"
#include "tandem/v1/generation.pb.h"
#include "tandem/request.h"
#include "tandem/sampling_params.h"
#include "tandem/status.h"
#include "tokenizer/tokenizer.h"
#include "worker/engine_loop.h"

namespace tandem {

// Longest request_id a client may choose.
inline constexpr size_t kMaxRequestIdLength = 256;

// Tandem's status codes are gRPC's canonical codes: the mapping is one-to-one.
grpc::Status ToGrpcStatus(const Status& status);

// Unset optional fields keep SamplingParams' defaults. Range checks happen at admission.
SamplingParams SamplingFromProto(const v1::SamplingParams& proto);

// Builds the engine request: the prompt (token ids, or text encoded with `tokenizer`, which may be
// null when the model has none), sampling and scheduling hints. `fallback_id` names requests that
// bring no request_id. InvalidArgument when the prompt is missing or given twice, or text comes to
// a server without a tokenizer. Token ids and parameter ranges are checked by the engine.
StatusOr<Request> RequestFromProto(const v1::GenerateRequest& proto, const Tokenizer* tokenizer,
                                   const std::string& fallback_id);

v1::FinishReason FinishReasonToProto(FinishReason reason);

// Appends the output's new tokens (and their logprobs when `with_logprobs`) to `response`.
void AppendTokens(const RequestOutput& output, bool with_logprobs, v1::GenerateResponse* response);

// Finish reason, usage and timings of a final output. `e2e_ms`: arrival -> finished.
void FillCompletion(const RequestOutput& output, double e2e_ms, v1::Completion* completion);

void FillStats(const EngineLoopStats& stats, int32_t num_open_streams, v1::GetStatsResponse* out);

}  // namespace tandem
