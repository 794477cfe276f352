// offline_bench: offline throughput of the CUDA engine — N requests of P random prompt tokens that
// each generate exactly O tokens (greedy, EOS ignored), all submitted at once, the engine stepping
// until every one finished; the KV cache takes what gpu_memory_utilization leaves, so as many run
// at once as memory (and max_num_seqs) allows. Dummy bf16 weights of the given config.
//
//   offline_bench --config configs/models/llama-3.1-8b.json --requests 256 --prompt-tokens 1000
//                 --output-tokens 1000 [--max-num-seqs 256]
//
// Prints one table row: output tokens/s, total tokens/s, wall time, peak concurrency. The same
// shapes at batch 1 and 32 are what benchmarks/gpu/hf_generate_bench.py runs through HF
// transformers `generate`, for the end-to-end ratio.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"
#include "model/model_source.h"
#include "worker/engine.h"

namespace tandem {
namespace {

struct Flags {
  std::string config = "configs/models/llama-3.1-8b.json";
  int requests = 256;
  int prompt_tokens = 1000;
  int output_tokens = 1000;
  int max_num_seqs = 256;
};

Status Run(const Flags& f) {
  ModelSourceOptions options;
  options.dummy_weights = true;
  TANDEM_ASSIGN_OR_RETURN(ModelSource source, OpenModelSource(f.config, options));
  const ModelConfig config = source.config;
  TANDEM_ASSIGN_OR_RETURN(auto backend, CudaBackend::Create(CudaBackendOptions{0, 0.9}));
  cudaDeviceProp prop{};
  TANDEM_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, backend->device()));
  EngineConfig ec;
  ec.block_size = 16;
  ec.max_num_batched_tokens = 8192;
  ec.max_num_seqs = f.max_num_seqs;
  ec.max_model_len = f.prompt_tokens + f.output_tokens + 16;
  ec.enable_prefix_caching = false;
  TANDEM_ASSIGN_OR_RETURN(auto engine, Engine::Create(ec, config, std::move(source.weights),
                                                      std::unique_ptr<Backend>(std::move(backend))));
  const EngineStats initial = engine->Stats();
  std::mt19937 rng(1);
  auto request = [&](const std::string& id, int prompt, int output) {
    Request r;
    r.request_id = id;
    for (int i = 0; i < prompt; ++i) r.prompt_token_ids.push_back(static_cast<TokenId>(rng() % config.vocab_size));
    r.sampling.temperature = 0.0f;
    r.sampling.max_tokens = output;
    r.sampling.min_tokens = output;
    r.sampling.ignore_eos = true;
    return r;
  };
  // Warm-up (cuBLAS heuristics, first launches).
  TANDEM_RETURN_IF_ERROR(engine->AddRequest(request("warm", 64, 8)));
  while (engine->HasUnfinished()) TANDEM_RETURN_IF_ERROR(engine->Step().status());

  for (int i = 0; i < f.requests; ++i) {
    TANDEM_RETURN_IF_ERROR(engine->AddRequest(request("r" + std::to_string(i), f.prompt_tokens, f.output_tokens)));
  }
  const auto t0 = Clock::now();
  int64_t output = 0, steps = 0;
  size_t peak = 0;
  double next_report = 10.0;
  while (engine->HasUnfinished()) {
    TANDEM_ASSIGN_OR_RETURN(auto outs, engine->Step());
    ++steps;
    for (const auto& o : outs) {
      output += static_cast<int64_t>(o.new_tokens.size());
      if (o.finished && o.finish_reason != FinishReason::kLength) {
        return InternalError("request " + o.request_id + " ended early: " + o.status.ToString());
      }
    }
    peak = std::max(peak, engine->Stats().num_running);
    const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    if (elapsed > next_report) {
      std::fprintf(stderr, "offline_bench: %.0f s, %lld / %lld output tokens\n", elapsed,
                   static_cast<long long>(output), static_cast<long long>(f.requests) * f.output_tokens);
      next_report += 10.0;
    }
  }
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  if (output != static_cast<int64_t>(f.requests) * f.output_tokens) return InternalError("token count mismatch");
  const double total = static_cast<double>(f.requests) * (f.prompt_tokens + f.output_tokens);
  std::printf("\n# offline_bench: %s, dummy bf16 weights, %s, %d KV blocks of 16 tokens\n\n",
              std::filesystem::path(f.config).filename().c_str(), prop.name, initial.blocks.num_total);
  std::printf("| requests | prompt | output | peak running | steps | wall s | output tok/s | total tok/s |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  std::printf("| %d | %d | %d | %zu | %lld | %.2f | %.0f | %.0f |\n", f.requests, f.prompt_tokens, f.output_tokens,
              peak, static_cast<long long>(steps), wall, static_cast<double>(output) / wall, total / wall);
  return OkStatus();
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) {
  tandem::Flags f;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--config") f.config = v;
    else if (a == "--requests") f.requests = std::atoi(v.c_str());
    else if (a == "--prompt-tokens") f.prompt_tokens = std::atoi(v.c_str());
    else if (a == "--output-tokens") f.output_tokens = std::atoi(v.c_str());
    else if (a == "--max-num-seqs") f.max_num_seqs = std::atoi(v.c_str());
    else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  if (argc % 2 == 0 || f.requests < 1 || f.prompt_tokens < 1 || f.output_tokens < 1) {
    std::fprintf(stderr,
                 "usage: offline_bench [--config PATH] [--requests N] [--prompt-tokens P] [--output-tokens O] "
                 "[--max-num-seqs S]\n");
    return 2;
  }
  tandem::Status s = tandem::Run(f);
  if (!s.ok()) {
    std::fprintf(stderr, "offline_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
