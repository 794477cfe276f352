// GenerationService and AdminService: the public gRPC API (proto/tandem/v1) over an Executor.
//
// Threads: gRPC's sync server runs each call on one of its threads. A Generate call submits its
// request to the executor, then waits on the request's RequestStream, which the engine thread fills
// through the output callback. While waiting it polls (every kPollInterval) whether the client
// cancelled or its deadline passed, and if so cancels the request in the executor, which frees its
// KV cache on the engine's next iteration. Detokenization (text deltas) runs on the call's thread,
// never on the engine thread.
//
// Ownership: the services borrow the executor and the tokenizer, which must outlive the server.
// Each call's RequestStream is shared by the call and the output callback; whichever lets go last
// frees it, so a call may return (client gone) while the engine still delivers its final output.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "tandem/v1/admin.grpc.pb.h"
#include "tandem/v1/generation.grpc.pb.h"
#include "router/executor.h"
#include "tokenizer/tokenizer.h"

namespace tandem {

// What ListModels reports, and what GenerateRequest.model may name.
struct ServedModel {
  std::string id;            // e.g. "tiny-llama"
  std::string path;
  std::string architecture;
  int64_t vocab_size = 0;
  int64_t max_model_len = 0;
  std::vector<int64_t> eos_token_ids;
  std::string backend;
  const Tokenizer* tokenizer = nullptr;  // null when the model ships none; borrowed
};

struct GenerationServiceOptions {
  // How often a waiting Generate call checks for client cancellation and deadlines.
  std::chrono::milliseconds poll_interval{50};
  // Outputs a RequestStream holds before merging (see request_stream.h).
  size_t max_queued_outputs = 64;
};

class GenerationService final : public v1::Generation::Service {
 public:
  GenerationService(Executor& executor, ServedModel model, GenerationServiceOptions options = {});

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  grpc::Status ListModels(grpc::ServerContext* context, const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override;

  int32_t num_open_streams() const { return num_open_streams_.load(); }

 private:
  grpc::Status CheckModel(const std::string& requested) const;
  std::string NextRequestId();

  Executor& executor_;                  // Constant after construction
  const ServedModel model_;             // Constant after construction
  const GenerationServiceOptions options_;
  const std::string id_prefix_;         // Constant after construction: names server-chosen ids
  std::atomic<int64_t> next_id_{0};
  std::atomic<int32_t> num_open_streams_{0};
};

class AdminService final : public v1::Admin::Service {
 public:
  // Borrows both; they must outlive the server.
  AdminService(const Executor& executor, const GenerationService& generation)
      : executor_(executor), generation_(generation) {}

  grpc::Status GetStats(grpc::ServerContext* context, const v1::GetStatsRequest* request,
                        v1::GetStatsResponse* response) override;

 private:
  const Executor& executor_;
  const GenerationService& generation_;
};

}  // namespace tandem
