// Prefill attention alone at the Llama-3.1-8B shape (32 query heads, 8 KV heads, head dim 128,
// causal, one sequence of T tokens, block size 16, blocks scattered over the cache): the
// wgmma prefill kernel (sm_90a; on compute capability 9.0 only), the mma.sync tensor-core kernel it
// replaced and the CUDA-core paged kernel before that, beside two limits measured in the same run —
// the bf16 mma.sync.m16n8k16 rate (a probe with no memory traffic) and cuBLAS's bf16 GEMM rate
// (8192^3, wgmma: the floor column). Each tensor-core kernel's output is compared with the CUDA-core
// kernel's on the same inputs. Causal FLOPs:
// 4 * heads * head_dim * T (T + 1) / 2. Inputs rotate over four sets so repeated runs do not
// measure the L2 cache; each time is the median of 20 runs after 5 warm-ups, with device events.
// benchmarks/gpu/sdpa_bench.py measures PyTorch's flash SDPA on the same shape.
//
//   prefill_attention_bench [--tokens 2048,8192]
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <memory>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "benchmarks/gpu/bench_kernels.cuh"
#include "kernels/paged_attention.cuh"
#include "kernels/paged_prefill_attention.cuh"
#include "kernels/paged_prefill_attention_wgmma.cuh"

namespace tandem {
namespace {

constexpr int kHeads = 32, kKvHeads = 8, kHeadDim = 128, kBlockSize = 16, kSets = 4;

// Only the attention kernels and cuBLAS are used (no backend).
class DeviceMemory {
 public:
  ~DeviceMemory() {
    if (data_ != nullptr) (void)cudaFree(data_);
  }
  static StatusOr<std::unique_ptr<DeviceMemory>> Make(size_t bytes) {
    auto b = std::make_unique<DeviceMemory>();
    TANDEM_CUDA_RETURN_IF_ERROR(cudaMalloc(&b->data_, bytes));
    return b;
  }
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Median seconds of `launch(rep)` over 20 runs after 5 warm-ups.
template <typename Launch>
StatusOr<double> Time(cudaStream_t s, Launch&& launch) {
  cudaEvent_t start = nullptr, stop = nullptr;
  TANDEM_CUDA_RETURN_IF_ERROR(cudaEventCreate(&start));
  TANDEM_CUDA_RETURN_IF_ERROR(cudaEventCreate(&stop));
  std::vector<double> t;
  Status status = OkStatus();
  for (int rep = 0; rep < 25 && status.ok(); ++rep) {
    status = CudaErrorToStatus(cudaEventRecord(start, s), "cudaEventRecord");
    if (status.ok()) status = launch(rep);
    if (status.ok()) status = CudaErrorToStatus(cudaEventRecord(stop, s), "cudaEventRecord");
    if (status.ok()) status = CudaErrorToStatus(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0;
    if (status.ok()) status = CudaErrorToStatus(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    if (rep >= 5) t.push_back(ms * 1e-3);
  }
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
  TANDEM_RETURN_IF_ERROR(status);
  return Median(t);
}

StatusOr<std::unique_ptr<DeviceMemory>> Random(cudaStream_t s, size_t elems, uint64_t seed) {
  TANDEM_ASSIGN_OR_RETURN(auto buf, DeviceMemory::Make(elems * 2));
  TANDEM_CUDA_RETURN_IF_ERROR(
      bench::LaunchFillRandomBf16(static_cast<__nv_bfloat16*>(buf->data()), elems, seed, 1.0f, s));
  return buf;
}

StatusOr<std::unique_ptr<DeviceMemory>> UploadInts(const std::vector<int32_t>& v) {
  TANDEM_ASSIGN_OR_RETURN(auto buf, DeviceMemory::Make(std::max<size_t>(4, v.size() * 4)));
  TANDEM_CUDA_RETURN_IF_ERROR(cudaMemcpy(buf->data(), v.data(), v.size() * 4, cudaMemcpyHostToDevice));
  return buf;
}

// (sequence 0, first token, count) items of `tile` tokens.
std::vector<int32_t> WorkItems(int t, int tile) {
  std::vector<int32_t> w;
  for (int tok = 0; tok < t; tok += tile) w.insert(w.end(), {0, tok, std::min(tile, t - tok)});
  return w;
}

std::vector<float> ToFloat(const std::vector<uint16_t>& bits) {
  std::vector<float> f(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) {
    const uint32_t u = static_cast<uint32_t>(bits[i]) << 16;
    std::memcpy(&f[i], &u, 4);
  }
  return f;
}

Status Run(const std::vector<int>& token_counts, cudaStream_t s, cublasHandle_t cublas) {
  cudaDeviceProp prop{};
  TANDEM_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, 0));

  // Limits.
  const int probe_blocks = prop.multiProcessorCount * 8, probe_iters = 4096;
  TANDEM_ASSIGN_OR_RETURN(auto sink, DeviceMemory::Make(sizeof(float) * probe_blocks * 256));
  TANDEM_ASSIGN_OR_RETURN(double probe_s, Time(s, [&](int) {
    return CudaErrorToStatus(
        bench::LaunchMmaRateProbe(probe_iters, probe_blocks, static_cast<float*>(sink->data()), s), "mma probe");
  }));
  const double mma_rate = bench::MmaRateProbeFlops(probe_iters, probe_blocks) / probe_s;
  double gemm_rate = 0;
  {
    constexpr int n = 8192;
    TANDEM_ASSIGN_OR_RETURN(auto a, Random(s, size_t{n} * n, 2));
    TANDEM_ASSIGN_OR_RETURN(auto b, Random(s, size_t{n} * n, 3));
    TANDEM_ASSIGN_OR_RETURN(auto c, Random(s, size_t{n} * n, 4));
    const float one = 1.0f, zero = 0.0f;
    TANDEM_ASSIGN_OR_RETURN(double gemm_s, Time(s, [&](int) {
      return CublasErrorToStatus(cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &one, b->data(), CUDA_R_16BF,
                                              n, a->data(), CUDA_R_16BF, n, &zero, c->data(), CUDA_R_16BF, n,
                                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                                 "cublasGemmEx");
    }));
    gemm_rate = 2.0 * n * static_cast<double>(n) * n / gemm_s;
  }
  std::printf("# prefill_attention_bench (%s, %d SMs)\n\n", prop.name, prop.multiProcessorCount);
  std::printf("| limit | rate |\n| --- | --- |\n");
  std::printf("| bf16 mma.sync.m16n8k16 probe | %.0f TFLOP/s |\n", mma_rate / 1e12);
  std::printf("| cuBLAS bf16 GEMM 8192^3 | %.0f TFLOP/s |\n\n", gemm_rate / 1e12);
  // The wgmma kernel runs on compute capability 9.0 alone (built for sm_90a).
  const bool wgmma = prop.major == 9 && prop.minor == 0;
  std::printf("| T | kernel | ms | TFLOP/s | floor ms (cuBLAS rate) | floor / time | rel diff vs CUDA-core |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- |\n");

  const int group = kHeads / kKvHeads;
  for (int t : token_counts) {
    const int blocks_per_seq = (t + kBlockSize - 1) / kBlockSize;
    const size_t q_elems = static_cast<size_t>(t) * kHeads * kHeadDim;
    const size_t cache_elems = static_cast<size_t>(blocks_per_seq) * kKvHeads * kBlockSize * kHeadDim;
    std::vector<std::unique_ptr<DeviceMemory>> q(kSets), k(kSets), v(kSets);
    for (int i = 0; i < kSets; ++i) {
      TANDEM_ASSIGN_OR_RETURN(q[i], Random(s, q_elems, 10 + 3 * i));
      TANDEM_ASSIGN_OR_RETURN(k[i], Random(s, cache_elems, 11 + 3 * i));
      TANDEM_ASSIGN_OR_RETURN(v[i], Random(s, cache_elems, 12 + 3 * i));
    }
    TANDEM_ASSIGN_OR_RETURN(auto out_wg, DeviceMemory::Make(q_elems * 2));
    TANDEM_ASSIGN_OR_RETURN(auto out_new, DeviceMemory::Make(q_elems * 2));
    TANDEM_ASSIGN_OR_RETURN(auto out_old, DeviceMemory::Make(q_elems * 2));
    std::vector<int32_t> table(blocks_per_seq), positions(t);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937(7));
    std::iota(positions.begin(), positions.end(), 0);
    const std::vector<int32_t> items_new = WorkItems(t, kernels::PagedPrefillAttentionTileTokens(group));
    const std::vector<int32_t> items_old = WorkItems(t, kernels::PagedAttentionTileTokens(group));
    TANDEM_ASSIGN_OR_RETURN(auto d_table, UploadInts(table));
    TANDEM_ASSIGN_OR_RETURN(auto d_pos, UploadInts(positions));
    TANDEM_ASSIGN_OR_RETURN(auto d_new, UploadInts(items_new));
    TANDEM_ASSIGN_OR_RETURN(auto d_old, UploadInts(items_old));

    const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
    // The two kernels take the same launch description; only the work items and output differ.
    auto params = [&](int rep, void* out, const void* items, size_t num_items) {
      kernels::PagedAttentionParams p;
      p.q = static_cast<const __nv_bfloat16*>(q[rep % kSets]->data());
      p.k_cache = static_cast<const __nv_bfloat16*>(k[rep % kSets]->data());
      p.v_cache = static_cast<const __nv_bfloat16*>(v[rep % kSets]->data());
      p.out = static_cast<__nv_bfloat16*>(out);
      p.block_tables = static_cast<const int32_t*>(d_table->data());
      p.positions = static_cast<const int32_t*>(d_pos->data());
      p.work_items = static_cast<const int32_t*>(items);
      p.num_work_items = static_cast<int32_t>(num_items / 3);
      p.max_blocks_per_seq = blocks_per_seq;
      p.num_heads = kHeads;
      p.num_kv_heads = kKvHeads;
      p.head_dim = kHeadDim;
      p.block_size = kBlockSize;
      p.scale = scale;
      return p;
    };
    auto launch_new = [&](int rep) {
      return CudaErrorToStatus(
          kernels::LaunchPagedPrefillAttention(params(rep, out_new->data(), d_new->data(), items_new.size()), s),
          "prefill attention");
    };
    auto launch_wg = [&](int rep) {
      return CudaErrorToStatus(
          kernels::LaunchPagedPrefillAttentionWgmma(params(rep, out_wg->data(), d_new->data(), items_new.size()), s),
          "wgmma prefill attention");
    };
    auto launch_old = [&](int rep) {
      return CudaErrorToStatus(
          kernels::LaunchPagedAttention(params(rep, out_old->data(), d_old->data(), items_old.size()), s),
          "paged attention");
    };
    double wg_s = 0;
    if (wgmma) {
      TANDEM_ASSIGN_OR_RETURN(wg_s, Time(s, launch_wg));
    }
    TANDEM_ASSIGN_OR_RETURN(double new_s, Time(s, launch_new));
    TANDEM_ASSIGN_OR_RETURN(double old_s, Time(s, launch_old));
    // Same inputs (the last set all ran on): the kernels must agree.
    if (wgmma) TANDEM_RETURN_IF_ERROR(launch_wg(24));
    TANDEM_RETURN_IF_ERROR(launch_new(24));
    TANDEM_RETURN_IF_ERROR(launch_old(24));
    auto download = [&](const DeviceMemory& d) -> StatusOr<std::vector<float>> {
      std::vector<uint16_t> bits(q_elems);
      TANDEM_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(bits.data(), d.data(), q_elems * 2, cudaMemcpyDeviceToHost, s));
      TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
      return ToFloat(bits);
    };
    TANDEM_ASSIGN_OR_RETURN(const std::vector<float> fb, download(*out_old));
    auto rel_diff = [&](const std::vector<float>& fa) {
      double diff = 0, norm = 0;
      for (size_t i = 0; i < q_elems; ++i) {
        diff += (fa[i] - fb[i]) * static_cast<double>(fa[i] - fb[i]);
        norm += fb[i] * static_cast<double>(fb[i]);
      }
      return std::isfinite(diff) ? std::sqrt(diff / norm) : INFINITY;
    };
    TANDEM_ASSIGN_OR_RETURN(const std::vector<float> fn, download(*out_new));
    const double flops = 4.0 * kHeads * kHeadDim * static_cast<double>(t) * (t + 1) / 2;
    const double floor_s = flops / gemm_rate;
    if (wgmma) {
      TANDEM_ASSIGN_OR_RETURN(const std::vector<float> fw, download(*out_wg));
      std::printf("| %d | wgmma prefill | %.3f | %.0f | %.3f | %.0f%% | %.2e |\n", t, wg_s * 1e3, flops / wg_s / 1e12,
                  floor_s * 1e3, 100 * floor_s / wg_s, rel_diff(fw));
    }
    std::printf("| %d | mma.sync prefill | %.3f | %.0f | %.3f | %.0f%% | %.2e |\n", t, new_s * 1e3,
                flops / new_s / 1e12, floor_s * 1e3, 100 * floor_s / new_s, rel_diff(fn));
    std::printf("| %d | CUDA-core paged | %.3f | %.0f | %.3f | %.0f%% | - |\n", t, old_s * 1e3,
                flops / old_s / 1e12, floor_s * 1e3, 100 * floor_s / old_s);
  }
  return OkStatus();
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) {
  std::vector<int> tokens{2048, 8192};
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--tokens") == 0 && i + 1 < argc) {
      tokens.clear();
      std::string list = argv[++i];
      for (size_t pos = 0; pos < list.size();) {
        const size_t comma = list.find(',', pos);
        tokens.push_back(std::stoi(list.substr(pos, comma - pos)));
        pos = comma == std::string::npos ? list.size() : comma + 1;
      }
    } else {
      std::fprintf(stderr, "usage: %s [--tokens 2048,8192]\n", argv[0]);
      return 2;
    }
  }
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  tandem::Status s = tandem::CudaErrorToStatus(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  if (s.ok()) s = tandem::CublasErrorToStatus(cublasCreate(&cublas), "cublasCreate");
  if (s.ok()) s = tandem::CublasErrorToStatus(cublasSetStream(cublas, stream), "cublasSetStream");
  if (s.ok()) s = tandem::Run(tokens, stream, cublas);
  if (cublas != nullptr) (void)cublasDestroy(cublas);
  if (stream != nullptr) (void)cudaStreamDestroy(stream);
  if (!s.ok()) {
    std::fprintf(stderr, "prefill_attention_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
