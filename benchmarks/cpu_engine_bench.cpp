// CPU engine benchmark: prefill and decode throughput of the whole engine (scheduler, paged KV,
// model, sampling) on the CPU reference backend, beside two limits measured in the same run:
//   decode  — memory bound: weight bytes per step / measured memory read bandwidth;
//   prefill — compute bound: 2 * params * tokens / measured fp32 FMA peak of this machine.
//
//   cpu_engine_bench [--testdata DIR] [--configs DIR] [--threads N] [--quick]
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "common/thread_pool.h"
#include "model/model_source.h"
#include "worker/engine.h"

namespace tandem {
namespace {

using Seconds = std::chrono::duration<double>;

double Now() { return Seconds(Clock::now().time_since_epoch()).count(); }

// Read bandwidth: sum a large buffer on every thread (bytes read / time), best of 3.
double MeasureReadBandwidth(ThreadPool& pool) {
  const size_t n = size_t{1} << 28;  // 1 GiB of floats
  std::vector<float> buf(n / sizeof(float), 1.0f);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<double> partial(pool.num_threads() * 16, 0.0);
    const double t0 = Now();
    pool.ParallelFor(static_cast<int64_t>(buf.size()), 1 << 20, [&](int64_t b, int64_t e) {
      float acc[16] = {};
      for (int64_t i = b; i + 16 <= e; i += 16) {
        for (int j = 0; j < 16; ++j) acc[j] += buf[i + j];
      }
      float s = 0;
      for (float a : acc) s += a;
      partial[(b / (1 << 20)) % partial.size()] += s;
    });
    const double dt = Now() - t0;
    volatile double sink = partial[0];
    (void)sink;
    best = std::max(best, static_cast<double>(n) / dt);
  }
  return best;
}

// fp32 FMA peak: independent multiply-adds on 16-lane vectors per thread.
double MeasureFmaPeak(int threads) {
  constexpr int kIters = 10'000'000;
  constexpr int kChains = 12;  // enough independent FMAs to cover latency on two ports
  std::vector<double> rates(threads);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      float a[kChains][16], b[16], c[16];
      for (int j = 0; j < 16; ++j) {
        b[j] = 0.999999f;
        c[j] = 1e-7f;
        for (int k = 0; k < kChains; ++k) a[k][j] = 1.0f + k;
      }
      const double t0 = Now();
      for (int i = 0; i < kIters; ++i) {
        for (int k = 0; k < kChains; ++k) {
          for (int j = 0; j < 16; ++j) a[k][j] = a[k][j] * b[j] + c[j];
        }
      }
      const double dt = Now() - t0;
      float s = 0;
      for (auto& row : a) for (float v : row) s += v;
      volatile float sink = s;
      (void)sink;
      rates[t] = 2.0 * kChains * 16 * kIters / dt;
    });
  }
  for (auto& w : workers) w.join();
  double total = 0;
  for (double r : rates) total += r;
  return total;
}

struct Row {
  std::string model, phase;
  int batch = 0, tokens = 0;
  double seconds = 0, tok_per_s = 0, achieved = 0, limit = 0;
  std::string unit;
};

int64_t WeightBytes(const ModelConfig& c) {
  const int64_t per_layer = c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim +
                            c.num_heads * c.head_dim * c.hidden_size + 3 * c.hidden_size * c.intermediate_size;
  return 2 * (c.num_layers * per_layer + c.vocab_size * c.hidden_size);  // bf16, LM head read once
}

// FLOPs of a prefill of `t` tokens: every layer's matrices for every token, causal attention, and
// the LM head for the one row that is sampled.
double PrefillFlops(const ModelConfig& c, int64_t t) {
  const double layer_params = static_cast<double>(c.hidden_size) * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim +
                              static_cast<double>(c.num_heads) * c.head_dim * c.hidden_size +
                              3.0 * c.hidden_size * c.intermediate_size;
  const double attention = 2.0 * c.num_heads * c.head_dim * static_cast<double>(t) * (t + 1);  // QK and PV
  return c.num_layers * (2.0 * layer_params * t + attention) + 2.0 * c.vocab_size * c.hidden_size;
}

void RunModel(const std::string& label, const std::filesystem::path& path, bool dummy, int threads,
              int prompt_len, std::vector<int> batches, int decode_steps, double bandwidth,
              double fma_peak, std::vector<Row>* rows) {
  ModelSourceOptions options;
  options.dummy_weights = dummy;
  auto source = OpenModelSource(path, options);
  if (!source.ok()) {
    std::fprintf(stderr, "%s: %s\n", label.c_str(), source.status().ToString().c_str());
    return;
  }
  const ModelConfig config = source->config;
  EngineConfig ec;
  ec.max_num_batched_tokens = std::max(prompt_len, 256);
  ec.kv_cache_bytes = 1LL << 30;
  ec.max_model_len = prompt_len + decode_steps + 16;
  ec.enable_prefix_caching = false;
  spdlog::info("{}: loading", label);
  auto engine = Engine::Create(ec, config, std::move(source->weights),
                               std::make_unique<CpuBackend>(CpuBackendConfig{threads}));
  if (!engine.ok()) {
    std::fprintf(stderr, "%s: %s\n", label.c_str(), engine.status().ToString().c_str());
    return;
  }
  Engine& e = **engine;
  int next_id = 0;
  auto make = [&](int len, int max_tokens) {
    Request r;
    r.request_id = std::to_string(next_id++);
    for (int i = 0; i < len; ++i) r.prompt_token_ids.push_back((i * 7919 + next_id * 31) % config.vocab_size);
    r.sampling.temperature = 0;
    r.sampling.max_tokens = max_tokens;
    r.sampling.ignore_eos = true;
    return r;
  };
  // Warm-up.
  (void)e.AddRequest(make(16, 2));
  while (e.HasUnfinished()) (void)e.Step();

  // Prefill: one prompt, one step.
  (void)e.AddRequest(make(prompt_len, 1));
  double t0 = Now();
  while (e.HasUnfinished()) (void)e.Step();
  double dt = Now() - t0;
  Row pre{label, "prefill", 1, prompt_len, dt, prompt_len / dt, 0, 0, "GFLOP/s"};
  pre.achieved = PrefillFlops(config, prompt_len) / dt / 1e9;
  pre.limit = fma_peak / 1e9;
  rows->push_back(pre);

  // Decode: `batch` sequences with short prompts; time only steps where all of them decode.
  for (int batch : batches) {
    for (int b = 0; b < batch; ++b) (void)e.AddRequest(make(16, decode_steps + 1));
    (void)e.Step();  // prefill of all prompts (fits the budget) + first tokens
    int steps = 0;
    t0 = Now();
    while (e.HasUnfinished()) {
      (void)e.Step();
      ++steps;
    }
    dt = Now() - t0;
    Row dec{label, "decode", batch, steps * batch, dt, steps * batch / dt, 0, 0, "GB/s"};
    dec.achieved = static_cast<double>(WeightBytes(config)) * steps / dt / 1e9;
    dec.limit = bandwidth / 1e9;
    rows->push_back(dec);
  }
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) {
  using namespace tandem;
  std::filesystem::path testdata = std::filesystem::path(TANDEM_SOURCE_ROOT) / ".." / "shared" / "testdata";
  std::filesystem::path configs = std::filesystem::path(TANDEM_SOURCE_ROOT) / "configs" / "models";
  int threads = ThreadPool::DefaultThreads();
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--testdata" && i + 1 < argc) testdata = argv[++i];
    else if (a == "--configs" && i + 1 < argc) configs = argv[++i];
    else if (a == "--threads" && i + 1 < argc) threads = std::stoi(argv[++i]);
    else if (a == "--quick") quick = true;
    else {
      std::fprintf(stderr, "usage: cpu_engine_bench [--testdata DIR] [--configs DIR] [--threads N] [--quick]\n");
      return 2;
    }
  }
  spdlog::set_level(spdlog::level::warn);
  ThreadPool pool(threads);
  const double bandwidth = MeasureReadBandwidth(pool);
  const double fma_peak = MeasureFmaPeak(threads);
  std::vector<Row> rows;
  RunModel("tiny-llama", testdata / "models" / "tiny-llama", false, threads, 1000, {1, 8, 32}, 64,
           bandwidth, fma_peak, &rows);
  RunModel("tiny-llama31", testdata / "models" / "tiny-llama31", false, threads, 1000, {1, 8, 32}, 64,
           bandwidth, fma_peak, &rows);
  if (!quick) {
    RunModel("llama-3.2-1b (dummy)", configs / "llama-3.2-1b.json", true, threads, 128, {1, 8}, 8,
             bandwidth, fma_peak, &rows);
  }
  std::printf("threads %d | measured read bandwidth %.1f GB/s | measured fp32 FMA peak %.1f GFLOP/s\n\n",
              threads, bandwidth / 1e9, fma_peak / 1e9);
  std::printf("| model | phase | batch | tokens | seconds | tokens/s | achieved | limit | ratio |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    std::printf("| %s | %s | %d | %d | %.3f | %.1f | %.1f %s | %.1f %s | %.0f%% |\n", r.model.c_str(),
                r.phase.c_str(), r.batch, r.tokens, r.seconds, r.tok_per_s, r.achieved, r.unit.c_str(),
                r.limit, r.unit.c_str(), 100.0 * r.achieved / r.limit);
  }
  return 0;
}
