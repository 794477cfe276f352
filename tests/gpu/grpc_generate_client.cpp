// tandem_grpc_client: a minimal tandem.v1.Generation client for the GPU machine (its image has no
// gRPC development files or Python stubs), used by scripts/gpu-run.sh to drive real `tandem serve`
// deployments there — colocated on one GPU and 1P+1D over NCCL on two — and compare their outputs.
//
//   tandem_grpc_client --server 127.0.0.1:50051 --prompts N [--max-tokens 24] [--concurrency 1]
//                      [--wait-s 300]
//
// Sends N deterministic synthetic prompts (ids below 2000, lengths 5..~600), greedy with EOS
// ignored, `--concurrency` at a time, and prints one JSON line per prompt in prompt order:
// {"index": i, "tokens": [...], "ttft_ms": x, "transfer_ms": y, "status": "OK"}. Waits up to
// --wait-s for the server to answer first. Exit code 1 if any request failed.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tandem/v1/generation.grpc.pb.h"

namespace {

struct Result {
  std::vector<int> tokens;
  double ttft_ms = 0;
  double transfer_ms = 0;
  std::string status = "OK";
};

std::vector<int> Prompt(int index) {
  std::mt19937 rng(static_cast<uint32_t>(1000 + index));
  const int length = 5 + (index * 97) % 600;
  std::vector<int> ids(static_cast<size_t>(length));
  for (int& id : ids) id = 1 + static_cast<int>(rng() % 1999);
  return ids;
}

Result Generate(tandem::v1::Generation::Stub& stub, int index, int max_tokens) {
  tandem::v1::GenerateRequest request;
  request.set_request_id("smoke-" + std::to_string(index));
  for (int id : Prompt(index)) request.add_prompt_token_ids(id);
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_sampling()->set_max_tokens(max_tokens);
  request.mutable_sampling()->set_ignore_eos(true);
  request.set_stream_text(false);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto reader = stub.Generate(&context, request);
  tandem::v1::GenerateResponse response;
  Result result;
  while (reader->Read(&response)) {
    for (int id : response.token_ids()) result.tokens.push_back(id);
    if (response.has_completion()) {
      result.ttft_ms = response.completion().timings().ttft_ms();
      result.transfer_ms = response.completion().timings().transfer_ms();
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) result.status = std::to_string(status.error_code()) + " " + status.error_message();
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  std::string server = "127.0.0.1:50051";
  int prompts = 8, max_tokens = 24, concurrency = 1, wait_s = 300;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const char* v = argv[i + 1];
    if (a == "--server") server = v;
    else if (a == "--prompts") prompts = std::atoi(v);
    else if (a == "--max-tokens") max_tokens = std::atoi(v);
    else if (a == "--concurrency") concurrency = std::atoi(v);
    else if (a == "--wait-s") wait_s = std::atoi(v);
    else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  auto channel = grpc::CreateChannel(server, grpc::InsecureChannelCredentials());
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(wait_s))) {
    std::fprintf(stderr, "tandem_grpc_client: %s did not answer within %d s\n", server.c_str(), wait_s);
    return 1;
  }
  auto stub = tandem::v1::Generation::NewStub(channel);
  // The router may accept connections before its workers are up: retry the first request.
  for (int attempt = 0;; ++attempt) {
    Result probe = Generate(*stub, 0, 1);
    if (probe.status == "OK") break;
    if (attempt > wait_s) {
      std::fprintf(stderr, "tandem_grpc_client: first request failed: %s\n", probe.status.c_str());
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  std::vector<Result> results(static_cast<size_t>(prompts));
  std::atomic<int> next{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < std::max(1, concurrency); ++t) {
    threads.emplace_back([&] {
      for (int i = next++; i < prompts; i = next++) results[static_cast<size_t>(i)] = Generate(*stub, i, max_tokens);
    });
  }
  for (auto& t : threads) t.join();
  int failed = 0;
  for (int i = 0; i < prompts; ++i) {
    const Result& r = results[static_cast<size_t>(i)];
    std::string tokens;
    for (int id : r.tokens) tokens += (tokens.empty() ? "" : ",") + std::to_string(id);
    std::printf("{\"index\": %d, \"tokens\": [%s], \"ttft_ms\": %.3f, \"transfer_ms\": %.3f, \"status\": \"%s\"}\n", i,
                tokens.c_str(), r.ttft_ms, r.transfer_ms, r.status.c_str());
    if (r.status != "OK" || static_cast<int>(r.tokens.size()) != max_tokens) ++failed;
  }
  if (failed > 0) std::fprintf(stderr, "tandem_grpc_client: %d of %d requests failed\n", failed, prompts);
  return failed > 0 ? 1 : 0;
}
