// worker_convert: the internal Worker service's messages (proto/tandem/v1/worker.proto) <-> Tandem's
// types. Pure functions, shared by the workers (worker_service.h) and the router
// (disagg_executor.h).
#pragma once

#include <string>

#include "tandem/request.h"
#include "tandem/v1/worker.pb.h"

namespace tandem {

void SamplingToProto(const SamplingParams& sampling, v1::SamplingParams* proto);
void RequestToWorkerProto(const Request& request, v1::WorkerRequest* proto);
// Arrival is now (each worker measures its own queueing).
Request RequestFromWorkerProto(const v1::WorkerRequest& proto);

FinishReason FinishReasonFromProto(v1::FinishReason reason);
// Tokens (with logprobs when `with_logprobs`), finish reason, usage and timings.
void OutputToWorkerProto(const RequestOutput& output, bool with_logprobs, v1::WorkerOutput* proto);
RequestOutput OutputFromWorkerProto(const std::string& request_id, const v1::WorkerOutput& proto);

}  // namespace tandem
