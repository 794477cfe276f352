#include "benchmarks/gpu/decode_attention_sweep.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "benchmarks/gpu/bench_kernels.cuh"
#include "benchmarks/gpu/bench_util.h"
#include "kernels/paged_decode_attention.cuh"

namespace tandem::bench {
namespace {

using kernels::PagedDecodeKernel;

int32_t OldSplits(int32_t num_seqs, int32_t num_kv_heads, int32_t max_context, int32_t num_sms) {
  return kernels::PagedDecodeAttentionSplits(num_seqs, num_kv_heads, max_context, num_sms, PagedDecodeKernel::kCudaCore);
}

struct Variant {
  std::string name;
  PagedDecodeKernel kernel;
  int32_t splits;
  bool one_key = false;  // every context 1 key long
};

class Events {
 public:
  ~Events() {
    if (a_) (void)cudaEventDestroy(a_);
    if (b_) (void)cudaEventDestroy(b_);
  }
  Status Init() {
    TANDEM_CUDA_RETURN_IF_ERROR(cudaEventCreate(&a_));
    TANDEM_CUDA_RETURN_IF_ERROR(cudaEventCreate(&b_));
    return OkStatus();
  }
  cudaEvent_t a_ = nullptr, b_ = nullptr;
};

}  // namespace

Status RunDecodeAttentionSweep(CudaBackend& backend, const ModelConfig& c, double read_bw,
                               const std::vector<int>& batches, int ctx) {
  const cudaStream_t s = backend.stream();
  int sms = 0;
  TANDEM_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, backend.device()));
  const int bs = 16;
  const int max_batch = *std::max_element(batches.begin(), batches.end());
  const int blocks_per_seq = (ctx + bs - 1) / bs;
  const int num_blocks = max_batch * blocks_per_seq;
  const int32_t nh = static_cast<int32_t>(c.num_heads), nkv = static_cast<int32_t>(c.num_kv_heads),
                hd = static_cast<int32_t>(c.head_dim);
  const size_t cache_elems = static_cast<size_t>(num_blocks) * nkv * bs * hd;
  const size_t row_elems = static_cast<size_t>(nh) * hd;
  TANDEM_ASSIGN_OR_RETURN(auto k, backend.Allocate(cache_elems * 2));
  TANDEM_ASSIGN_OR_RETURN(auto v, backend.Allocate(cache_elems * 2));
  TANDEM_ASSIGN_OR_RETURN(auto q, backend.Allocate(max_batch * row_elems * 2));
  TANDEM_ASSIGN_OR_RETURN(auto out, backend.Allocate(max_batch * row_elems * 2));
  TANDEM_ASSIGN_OR_RETURN(auto out_ref, backend.Allocate(max_batch * row_elems * 2));
  auto* kp = static_cast<__nv_bfloat16*>(k->data());
  auto* vp = static_cast<__nv_bfloat16*>(v->data());
  auto* qp = static_cast<__nv_bfloat16*>(q->data());
  TANDEM_CUDA_RETURN_IF_ERROR(LaunchFillRandomBf16(kp, cache_elems, 17, 1.0f, s));
  TANDEM_CUDA_RETURN_IF_ERROR(LaunchFillRandomBf16(vp, cache_elems, 18, 1.0f, s));
  TANDEM_CUDA_RETURN_IF_ERROR(LaunchFillRandomBf16(qp, max_batch * row_elems, 19, 1.0f, s));
  const int32_t max_swept_splits = 8;
  size_t partial_floats = 0;
  for (int b : batches) {
    const int32_t most = std::max({max_swept_splits, OldSplits(b, nkv, ctx, sms),
                                   kernels::PagedDecodeAttentionSplits(b, nkv, ctx, sms)});
    partial_floats = std::max(partial_floats, kernels::PagedDecodeAttentionPartialFloats(b, nh, hd, most));
  }
  TANDEM_ASSIGN_OR_RETURN(auto partial, backend.Allocate(std::max<size_t>(4, partial_floats * 4)));
  // Every block once over all sets: set i of a batch takes the i-th slice of one shuffled order.
  std::vector<int32_t> perm(num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(11));
  TANDEM_ASSIGN_OR_RETURN(auto tables, backend.Allocate(perm.size() * 4));
  TANDEM_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(tables->data(), perm.data(), perm.size() * 4, cudaMemcpyHostToDevice, s));
  std::vector<int32_t> first(max_batch, 0);
  TANDEM_ASSIGN_OR_RETURN(auto positions, backend.Allocate(first.size() * 4));  // per config below
  // One-key contexts: what a launch costs besides streaming K/V (launch, prologue, epilogue).
  TANDEM_ASSIGN_OR_RETURN(auto first_positions, backend.Allocate(first.size() * 4));
  TANDEM_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(first_positions->data(), first.data(), first.size() * 4, cudaMemcpyHostToDevice, s));
  TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
  Events ev;
  TANDEM_RETURN_IF_ERROR(ev.Init());

  std::printf("\n## decode attention kernel alone, launched directly (context %d, bs %d, %d SMs)\n\n", ctx, bs, sms);
  std::printf("R = 20 back-to-back launches between two events (median of 7 groups), each on the next of "
              "`sets` table sets of disjoint blocks; `1 launch` = one launch between events (median of 10).\n\n");
  std::printf("| batch | K/V MB | limit us | variant | splits | us (R launches) | GB/s | of read bw | us (1 launch) |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  std::vector<std::string> checks;
  // Every batch at `ctx`, then longer contexts at small batches (time = fixed cost + bytes / rate).
  struct Config {
    int batch, ctx;
  };
  std::vector<Config> configs;
  for (int b : batches) configs.push_back({b, ctx});
  for (int f : {2, 4}) {
    if (batches.front() * ctx * f <= num_blocks * bs) configs.push_back({batches.front(), ctx * f});
  }
  for (const Config& cfg : configs) {
    const int b = cfg.batch, cl = cfg.ctx;
    const bool extra = cl != ctx;
    const int bps = (cl + bs - 1) / bs;
    const int sets = std::max(1, std::min(8, num_blocks / (b * bps)));
    const double kv_bytes = 2.0 * b * cl * nkv * hd * 2.0;
    const int32_t policy = kernels::PagedDecodeAttentionSplits(b, nkv, cl, sms);
    std::vector<int32_t> cfg_pos(max_batch, cl - 1);
    TANDEM_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(positions->data(), cfg_pos.data(), cfg_pos.size() * 4, cudaMemcpyHostToDevice, s));
    TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
    std::vector<Variant> variants = {
        {"cuda-core (before), old policy", PagedDecodeKernel::kCudaCore, OldSplits(b, nkv, cl, sms)},
        {"cuda-core, new policy", PagedDecodeKernel::kCudaCore, policy},
        {"tensor-core (engine: kAuto + policy)", PagedDecodeKernel::kAuto, policy},
    };
    if (extra) variants.erase(variants.begin() + 1);
    for (int32_t sp : {1, 2, 4}) {
      if (extra) break;
      variants.push_back({"tensor-core", PagedDecodeKernel::kTensorCore, sp});
    }
    if (!extra) {
      variants.push_back({"cuda-core, 1-key contexts (fixed cost)", PagedDecodeKernel::kCudaCore,
                          OldSplits(b, nkv, cl, sms), true});
      variants.push_back({"tensor-core, 1-key contexts (fixed cost)", PagedDecodeKernel::kAuto, policy, true});
    }
    kernels::PagedDecodeAttentionParams p;
    p.q = qp;
    p.k_cache = kp;
    p.v_cache = vp;
    p.partial = static_cast<float*>(partial->data());
    p.num_seqs = b;
    p.max_blocks_per_seq = bps;
    p.num_heads = nh;
    p.num_kv_heads = nkv;
    p.head_dim = hd;
    p.block_size = bs;
    p.scale = 1.0f / std::sqrt(static_cast<float>(hd));
    auto launch = [&](const Variant& var, int set, void* dst) {
      p.kernel = var.kernel;
      p.num_splits = var.splits;
      p.positions = static_cast<const int32_t*>(var.one_key ? first_positions->data() : positions->data());
      p.out = static_cast<__nv_bfloat16*>(dst);
      p.block_tables = static_cast<const int32_t*>(tables->data()) + static_cast<int64_t>(set) * b * bps;
      return kernels::LaunchPagedDecodeAttention(p, s);
    };
    for (const Variant& var : variants) {
      for (int w = 0; w < 3; ++w) TANDEM_CUDA_RETURN_IF_ERROR(launch(var, w % sets, out->data()));
      const int reps = 20;
      std::vector<double> grouped, single;
      int next = 0;
      for (int g = 0; g < 7; ++g) {
        TANDEM_CUDA_RETURN_IF_ERROR(cudaEventRecord(ev.a_, s));
        for (int r = 0; r < reps; ++r) TANDEM_CUDA_RETURN_IF_ERROR(launch(var, next++ % sets, out->data()));
        TANDEM_CUDA_RETURN_IF_ERROR(cudaEventRecord(ev.b_, s));
        TANDEM_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(ev.b_));
        float ms = 0;
        TANDEM_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, ev.a_, ev.b_));
        grouped.push_back(ms * 1e-3 / reps);
      }
      for (int r = 0; r < 10; ++r) {
        TANDEM_CUDA_RETURN_IF_ERROR(cudaEventRecord(ev.a_, s));
        TANDEM_CUDA_RETURN_IF_ERROR(launch(var, next++ % sets, out->data()));
        TANDEM_CUDA_RETURN_IF_ERROR(cudaEventRecord(ev.b_, s));
        TANDEM_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(ev.b_));
        float ms = 0;
        TANDEM_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, ev.a_, ev.b_));
        single.push_back(ms * 1e-3);
      }
      const double t = Median(grouped);
      if (var.one_key) {
        std::printf("| %d | - | - | %s | %d | %.1f | - | - | %.1f |\n", b, var.name.c_str(), var.splits, t * 1e6,
                    Median(single) * 1e6);
        continue;
      }
      std::printf("| %d%s | %.1f | %.1f | %s | %d | %.1f | %.0f | %.1f%% | %.1f |\n", b,
                  extra ? (" (ctx " + std::to_string(cl) + ")").c_str() : "", kv_bytes / 1e6,
                  kv_bytes / read_bw * 1e6, var.name.c_str(), var.splits, t * 1e6, kv_bytes / t / 1e9,
                  100.0 * kv_bytes / t / read_bw, Median(single) * 1e6);
    }
    if (extra) continue;
    // The engine's kernel against the old one on the same inputs (table set 0).
    TANDEM_CUDA_RETURN_IF_ERROR(launch(variants[0], 0, out_ref->data()));
    TANDEM_CUDA_RETURN_IF_ERROR(launch(variants[2], 0, out->data()));
    std::vector<uint16_t> a(b * row_elems), r(b * row_elems);
    TANDEM_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(a.data(), out->data(), a.size() * 2, cudaMemcpyDeviceToHost, s));
    TANDEM_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(r.data(), out_ref->data(), r.size() * 2, cudaMemcpyDeviceToHost, s));
    TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
    double num = 0, den = 0;
    bool finite = true;
    for (size_t i = 0; i < a.size(); ++i) {
      const auto widen = [](uint16_t h) {
        const uint32_t bits = static_cast<uint32_t>(h) << 16;
        float f;
        std::memcpy(&f, &bits, 4);
        return static_cast<double>(f);
      };
      const double x = widen(a[i]), y = widen(r[i]);
      finite = finite && std::isfinite(x);
      num += (x - y) * (x - y);
      den += y * y;
    }
    char line[160];
    std::snprintf(line, sizeof(line), "batch %d: ||tensor-core - cuda-core|| / ||cuda-core|| = %.2e%s", b,
                  std::sqrt(num / std::max(den, 1e-30)), finite ? "" : " (NON-FINITE OUTPUT)");
    checks.push_back(line);
  }
  std::printf("\n");
  for (const std::string& line : checks) std::printf("%s\n", line.c_str());
  return OkStatus();
}

}  // namespace tandem::bench
