#include "benchmarks/gpu/decode_gemv_bench.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "backend/cuda/cuda_check.h"
#include "benchmarks/gpu/bench_util.h"

namespace tandem::bench {
namespace {

// Each decode-shaped GEMV alone (M = 1, the small-M kernel with the epilogue the fused decode
// layer uses), weights rotated through a 2 GiB pool so they come from HBM. "single": one launch
// between events (launch latency included); "back to back": kBackToBack launches on consecutive
// weights between two events, per launch — as inside a decode graph — with and without
// programmatic launch, with one output column per warp (the kernel before this change), with
// two (the kernel picks two where one would not fit one wave), and streamed through shared memory
// (kernels/streamed_gemv.cuh; the LM head stays on the register kernel, see small_m_gemv.cuh).
constexpr int kBackToBack = 16;

constexpr int kTracedLaunches = 8;
constexpr int kTraceStamps = kernels::kStreamedGemvTraceStamps;

// Phases of launches 1..kTracedLaunches-1 from their stamps [launch][cta][stamp] (DecodeGemvRow::phases).
void SummarizeTrace(const std::vector<uint64_t>& t, int ctas, double (&phases)[7]) {
  auto stamps = [&](int launch, int i) {
    std::vector<double> v(ctas);
    for (int c = 0; c < ctas; ++c) v[c] = static_cast<double>(t[(static_cast<size_t>(launch) * ctas + c) * kTraceStamps + i]);
    std::sort(v.begin(), v.end());
    return v;
  };
  for (double& p : phases) p = 0;
  for (int l = 1; l < kTracedLaunches; ++l) {
    const double prev_end = stamps(l - 1, 4).back();
    const auto entry = stamps(l, 0), wait = stamps(l, 1), staged = stamps(l, 2), looped = stamps(l, 3), end = stamps(l, 4);
    const double v[7] = {entry.front(), entry[ctas / 2], wait.front(), staged[ctas / 2], looped[ctas / 2], looped.back(), end.back()};
    for (int i = 0; i < 7; ++i) phases[i] += (v[i] - prev_end) * 1e-3 / (kTracedLaunches - 1);
  }
}

}  // namespace

StatusOr<std::vector<DecodeGemvRow>> MeasureDecodeGemvs(CudaBackend& backend, const ModelConfig& c, int num_sms) {
  const cudaStream_t s = backend.stream();
  EventTimer timer;
  TANDEM_RETURN_IF_ERROR(timer.Init());
  const size_t pool_elems = size_t{1} << 30;
  TANDEM_ASSIGN_OR_RETURN(DeviceMem pool, AllocRandom(backend, s, pool_elems, 5, 0.02f));
  TANDEM_ASSIGN_OR_RETURN(DeviceMem x, AllocRandom(backend, s, 1 << 16, 6, 1.0f));
  TANDEM_ASSIGN_OR_RETURN(DeviceMem norm, AllocRandom(backend, s, 1 << 16, 7, 1.0f));
  TANDEM_ASSIGN_OR_RETURN(auto out, backend.Allocate(size_t{4} * c.vocab_size));
  const int64_t h = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim,
                inter = c.intermediate_size;
  using E = kernels::SmallMGemvEpilogue;
  std::vector<DecodeGemvRow> rows = {{"q (plain)", q, h},
                                 {"qkv fused, norm prologue", q + 2 * kv, h, E::kStore, true},
                                 {"o, residual add", h, q, E::kAddToOut},
                                 {"gate+up fused, norm + silu*mul", 2 * inter, h, E::kSiluMul, true},
                                 {"down, residual add", h, inter, E::kAddToOut},
                                 {"lm_head (f32 out), norm prologue", c.vocab_size, h, E::kStore, true, true}};
  for (DecodeGemvRow& r : rows) {
    const size_t w_elems = static_cast<size_t>(r.n * r.k);
    const size_t slots = std::max<size_t>(1, pool_elems / w_elems);
    size_t next = 0;
    uint64_t* traced = nullptr;
    auto launch = [&](int columns_per_warp, bool programmatic, bool streamed = false, int prewait = -1) {
      kernels::SmallMGemvParams p;
      p.x = static_cast<const __nv_bfloat16*>(x.data());
      p.weight = static_cast<const __nv_bfloat16*>(pool.data()) + (next++ % slots) * w_elems;
      p.norm_weight = r.norm ? static_cast<const __nv_bfloat16*>(norm.data()) : nullptr;
      p.out = out->data();
      p.out_is_f32 = r.f32;
      p.epilogue = r.epilogue;
      p.programmatic = programmatic;
      p.columns_per_warp = columns_per_warp;
      p.streamed_max_rows = streamed ? 1 : 0;
      p.trace = traced;
      p.streamed_prewait_segments = prewait;
      p.num_sms = num_sms;
      p.m = 1;
      p.n = r.epilogue == E::kSiluMul ? r.n / 2 : r.n;
      p.k = r.k;
      return kernels::LaunchSmallMGemv(p, s);
    };
    std::vector<double> t;
    for (int rep = 0; rep < 24; ++rep) {
      TANDEM_RETURN_IF_ERROR(timer.Start(s));
      TANDEM_CUDA_RETURN_IF_ERROR(launch(0, false));
      TANDEM_ASSIGN_OR_RETURN(double dt, timer.Stop(s));
      if (rep >= 4) t.push_back(dt);
    }
    r.single = Median(t);
    for (int u = 0; u < 6; ++u) {
      for (int pdl = u < 3 ? 0 : 1; pdl < 2; ++pdl) {
        t.clear();
        for (int rep = 0; rep < 8; ++rep) {
          TANDEM_RETURN_IF_ERROR(timer.Start(s));
          for (int i = 0; i < kBackToBack; ++i) {
            TANDEM_CUDA_RETURN_IF_ERROR(launch(u >= 2 ? 0 : u + 1, pdl == 1, u >= 2, u == 2 ? -1 : 6 - u));
          }
          TANDEM_ASSIGN_OR_RETURN(double dt, timer.Stop(s));
          if (rep >= 2) t.push_back(dt / kBackToBack);
        }
        r.b2b[u][pdl] = Median(t);
      }
    }
    // Traced runs of the streamed kernel back to back with PDL (the LM head takes the register kernel).
    if (r.f32) continue;
    const int ctas = static_cast<int>(std::min<int64_t>(num_sms, r.epilogue == E::kSiluMul ? r.n / 2 : r.n));
    std::vector<uint64_t> stamps(static_cast<size_t>(kTracedLaunches) * ctas * kTraceStamps);
    TANDEM_ASSIGN_OR_RETURN(auto trace, backend.Allocate(stamps.size() * sizeof(uint64_t)));
    for (int v = 0; v < 2; ++v) {
      for (int i = 0; i < kTracedLaunches; ++i) {
        traced = static_cast<uint64_t*>(trace->data()) + static_cast<size_t>(i) * ctas * kTraceStamps;
        TANDEM_CUDA_RETURN_IF_ERROR(launch(0, true, true, v == 0 ? -1 : 3));
      }
      traced = nullptr;
      TANDEM_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(stamps.data(), trace->data(), stamps.size() * sizeof(uint64_t),
                                                  cudaMemcpyDeviceToHost, s));
      TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
      SummarizeTrace(stamps, ctas, r.phases[v]);
    }
  }
  return rows;
}

void PrintDecodeGemvTables(const std::vector<DecodeGemvRow>& rows, double read_bw) {
  std::printf("\n## decode-shaped GEMV alone (M = 1, small-M kernel, weights from HBM; us per launch, %% of read bw)\n\n");
  std::printf("| weight | N x K | single launch | back to back, 1 column/warp | 1 column/warp + PDL | 2 columns/warp | "
              "2 columns/warp + PDL | streamed | streamed + PDL | streamed + PDL, 3 slots before the wait | "
              "2 slots | 1 slot |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const DecodeGemvRow& r : rows) {
    const double bytes = 2.0 * r.n * r.k;
    auto cell = [&](double sec) { return std::to_string(sec * 1e6).substr(0, 5) + " (" +
                                         std::to_string(static_cast<int>(std::lround(100.0 * bytes / sec / read_bw))) + "%)"; };
    std::printf("| %s | %lld x %lld | %s |", r.name.c_str(), static_cast<long long>(r.n), static_cast<long long>(r.k),
                cell(r.single).c_str());
    for (int u = 0; u < 6; ++u) {
      if (u < 3) std::printf(" %s |", cell(r.b2b[u][0]).c_str());
      std::printf(" %s |", cell(r.b2b[u][1]).c_str());
    }
    std::printf("\n");
  }
  std::printf("\n## streamed GEMV back to back with PDL, per launch: us after the previous launch's last CTA ended "
              "(%%globaltimer stamps of each CTA; mean of 7 launches)\n\n");
  std::printf("| weight | slots before the wait | floor us | first CTA in | median CTA in | first past wait | "
              "median x staged | median segments done | last segments done | last CTA end |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n");
  for (const DecodeGemvRow& r : rows) {
    if (r.f32) continue;
    for (int v = 0; v < 2; ++v) {
      std::printf("| %s | %s | %.2f |", r.name.c_str(), v == 0 ? "default" : "3", 2.0 * r.n * r.k / read_bw * 1e6);
      for (double p : r.phases[v]) std::printf(" %.2f |", p);
      std::printf("\n");
    }
  }
}

}  // namespace tandem::bench
