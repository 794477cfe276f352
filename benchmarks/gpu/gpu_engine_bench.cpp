// CUDA engine benchmark: the whole engine (scheduler, paged KV, model, sampling) on the CUDA
// backend with a real model's shapes and dummy weights, beside the two hardware limits measured in
// the same run:
//   HBM read bandwidth — a 16-byte-load read probe over 4 GiB (bytes read / time), and a
//                        device-to-device copy (bytes read + written / time);
//   bf16 GEMM rate     — cuBLAS bf16 x bf16 -> bf16, fp32 accumulate, 8192^3.
// Then: decode steps at batch 1/32/64/128/256 with a 1k context (weight bytes / bandwidth is the
// floor), prefill of 2k and 8k tokens at batch 1 (FLOPs / GEMM rate), the paged attention kernel
// alone on decode batches (K/V bytes / time), each decode-shaped Linear alone (and the streamed
// GEMV's phases back to back from its CTAs' %globaltimer stamps: when CTAs enter, pass the wait,
// have x staged, finish their segments and end), and the host's CPU
// time per step (CLOCK_THREAD_CPUTIME_ID around Engine::Step, with blocking sync so waiting for the
// GPU is not counted as CPU time).
//
//   gpu_engine_bench [--config FILE] [--quick] [--host-sampling] [--no-cuda-graphs] [--attention-only]
//                    [--cuda-core-decode-attention] [--kernel-ab] [--no-small-batch-attention] [--profile-step]
// --host-sampling: the engine samples through the host reference (Backend::SampleRows' default:
// every logits row copied to the host) instead of CudaBackend's sampling kernel — the "before" of
// the device-sampling change, measured on the same machine. --no-cuda-graphs: decode steps launched
// eagerly (EngineConfig::enable_cuda_graphs off), the "before" of decode graphs. --attention-only:
// the limits and the decode attention tables alone (no Linears, no engine): the attention kernel
// through the backend and launched directly (decode_attention_sweep.h: old vs new kernel, split counts).
// --cuda-core-decode-attention: decode attention through the CUDA-core split-KV kernel and its split
// policy (CudaBackendOptions::cuda_core_decode_attention), the "before" of the tensor-core kernel.
// --kernel-ab: every decode batch is measured under each kernel variant of kVariants (small-batch
// fusion, programmatic launch, the streamed GEMV, RoPE fused into decode attention, the small-batch
// decode attention switches; CudaBackend::SetKernelOptions), in three interleaved rounds on the
// same engine, the first variant being the kernels as they were before fusion and PDL.
// --no-small-batch-attention: decode attention of <= 4 sequences launched plainly with the combine
// kernel (CudaBackendOptions::programmatic_decode_attention and decode_attention_combines_in_kernel
// off; both on by default) for the whole run.
// --profile-step: after the smallest batch's measured steps, one more step (each variant's)
// between cudaProfilerStart / Stop, for `ncu --profile-from-start off` (per-kernel durations).
// Weights are generated once (multithreaded) and uploaded once; one engine serves every phase.
#include <cuda_profiler_api.h>
#include <cuda_runtime_api.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"
#include "benchmarks/gpu/bench_kernels.cuh"
#include "benchmarks/gpu/bench_util.h"
#include "benchmarks/gpu/decode_attention_sweep.h"
#include "benchmarks/gpu/decode_gemv_bench.h"
#include "kernels/small_m_gemv.cuh"
#include "model/model_source.h"
#include "worker/engine.h"

namespace tandem {
namespace {

using bench::AllocRandom;
using bench::DeviceMem;
using bench::EventTimer;
using bench::Median;

using Seconds = std::chrono::duration<double>;

double WallNow() { return Seconds(Clock::now().time_since_epoch()).count(); }
double CpuNow() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}
struct Limits {
  double read_bw = 0;   // bytes/s, read probe
  double copy_bw = 0;   // bytes/s, read + written by a D2D copy
  double gemm_rate = 0; // FLOP/s
};

StatusOr<Limits> MeasureLimits(CudaBackend& backend) {
  Limits lim;
  const cudaStream_t s = backend.stream();
  EventTimer timer;
  TANDEM_RETURN_IF_ERROR(timer.Init());
  {
    const size_t bytes = size_t{4} << 30;
    TANDEM_ASSIGN_OR_RETURN(DeviceMem buf, AllocRandom(backend, s, bytes / 2, 1, 1.0f));
    int sms = 0;
    TANDEM_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, backend.device()));
    const int blocks = sms * 4;
    TANDEM_ASSIGN_OR_RETURN(auto sink, backend.Allocate(sizeof(uint32_t) * blocks));
    std::vector<double> t;
    for (int rep = 0; rep < 12; ++rep) {
      TANDEM_RETURN_IF_ERROR(timer.Start(s));
      TANDEM_CUDA_RETURN_IF_ERROR(
          bench::LaunchReadProbe(buf.data(), bytes, static_cast<uint32_t*>(sink->data()), blocks, s));
      TANDEM_ASSIGN_OR_RETURN(double dt, timer.Stop(s));
      if (rep >= 2) t.push_back(dt);
    }
    lim.read_bw = static_cast<double>(bytes) / Median(t);
    // Copy half the buffer onto the other half.
    t.clear();
    const size_t half = bytes / 2;
    for (int rep = 0; rep < 8; ++rep) {
      TANDEM_RETURN_IF_ERROR(timer.Start(s));
      TANDEM_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(static_cast<char*>(buf.data()) + half, buf.data(), half,
                                                  cudaMemcpyDeviceToDevice, s));
      TANDEM_ASSIGN_OR_RETURN(double dt, timer.Stop(s));
      if (rep >= 2) t.push_back(dt);
    }
    lim.copy_bw = 2.0 * static_cast<double>(half) / Median(t);
  }
  {
    constexpr int n = 8192;
    const size_t elems = size_t{n} * n;
    TANDEM_ASSIGN_OR_RETURN(DeviceMem a, AllocRandom(backend, s, elems, 2, 1.0f));
    TANDEM_ASSIGN_OR_RETURN(DeviceMem b, AllocRandom(backend, s, elems, 3, 1.0f));
    TANDEM_ASSIGN_OR_RETURN(DeviceMem c, AllocRandom(backend, s, elems, 4, 1.0f));
    Tensor ta(a.data(), DType::kBF16, {n, n}), tb(b.data(), DType::kBF16, {n, n}),
        tc(c.data(), DType::kBF16, {n, n});
    std::vector<double> t;
    for (int rep = 0; rep < 12; ++rep) {
      TANDEM_RETURN_IF_ERROR(timer.Start(s));
      TANDEM_RETURN_IF_ERROR(backend.Linear(ta, tb, Tensor(), tc));  // cuBLAS bf16 GEMM
      TANDEM_ASSIGN_OR_RETURN(double dt, timer.Stop(s));
      if (rep >= 2) t.push_back(dt);
    }
    lim.gemm_rate = 2.0 * n * static_cast<double>(n) * n / Median(t);
  }
  return lim;
}

// The paged attention kernel alone on decode batches: `batch` sequences, one query each at
// position ctx - 1, scattered blocks.
struct AttentionRow {
  int batch = 0;
  double seconds = 0, kv_bytes = 0;
};

StatusOr<std::vector<AttentionRow>> MeasureDecodeAttention(CudaBackend& backend, const ModelConfig& c,
                                                           const std::vector<int>& batches, int ctx) {
  const cudaStream_t s = backend.stream();
  EventTimer timer;
  TANDEM_RETURN_IF_ERROR(timer.Init());
  const int bs = 16;
  const int max_batch = *std::max_element(batches.begin(), batches.end());
  const int blocks_per_seq = (ctx + bs - 1) / bs;
  const int num_blocks = max_batch * blocks_per_seq;
  const int64_t nh = c.num_heads, nkv = c.num_kv_heads, hd = c.head_dim;
  const size_t cache_elems = static_cast<size_t>(num_blocks) * nkv * bs * hd;
  TANDEM_ASSIGN_OR_RETURN(DeviceMem k, AllocRandom(backend, s, cache_elems, 7, 1.0f));
  TANDEM_ASSIGN_OR_RETURN(DeviceMem v, AllocRandom(backend, s, cache_elems, 8, 1.0f));
  TANDEM_ASSIGN_OR_RETURN(DeviceMem q, AllocRandom(backend, s, static_cast<size_t>(max_batch * nh * hd), 9, 1.0f));
  TANDEM_ASSIGN_OR_RETURN(auto out, backend.Allocate(static_cast<size_t>(max_batch * nh * hd) * 2));
  KvLayerView view{Tensor(k.data(), DType::kBF16, {num_blocks, nkv, bs, hd}),
                   Tensor(v.data(), DType::kBF16, {num_blocks, nkv, bs, hd})};
  std::vector<int32_t> perm(num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(11));
  AttentionParams params{static_cast<int32_t>(nh), static_cast<int32_t>(nkv), static_cast<int32_t>(hd),
                         1.0f / std::sqrt(static_cast<float>(hd)), 0};
  std::vector<AttentionRow> rows;
  for (int b : batches) {
    std::vector<int32_t> query_start(b + 1), context_lens(b, ctx), positions(b, ctx - 1);
    std::vector<int64_t> slots(b);
    std::iota(query_start.begin(), query_start.end(), 0);
    std::vector<int32_t> tables(perm.begin(), perm.begin() + static_cast<int64_t>(b) * blocks_per_seq);
    for (int i = 0; i < b; ++i) {
      slots[i] = static_cast<int64_t>(tables[i * blocks_per_seq + (ctx - 1) / bs]) * bs + (ctx - 1) % bs;
    }
    AttentionMetadata m;
    m.num_seqs = b;
    m.num_tokens = b;
    m.query_start = query_start;
    m.context_lens = context_lens;
    m.block_tables = tables;
    m.max_blocks_per_seq = blocks_per_seq;
    m.positions = positions;
    m.slot_mapping = slots;
    m.block_size = bs;
    m.max_query_len = 1;
    m.max_context_len = ctx;
    Tensor tq(q.data(), DType::kBF16, {b, nh * hd}), to(out->data(), DType::kBF16, {b, nh * hd});
    std::vector<double> t;
    for (int rep = 0; rep < 24; ++rep) {
      TANDEM_RETURN_IF_ERROR(timer.Start(s));
      TANDEM_RETURN_IF_ERROR(backend.Attention(tq, view, params, m, to));
      TANDEM_ASSIGN_OR_RETURN(double dt, timer.Stop(s));
      if (rep >= 4) t.push_back(dt);
    }
    rows.push_back({b, Median(t), 2.0 * b * ctx * nkv * hd * 2.0});
  }
  return rows;
}

int64_t WeightBytes(const ModelConfig& c) {
  const int64_t per_layer = c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim +
                            c.num_heads * c.head_dim * c.hidden_size + 3 * c.hidden_size * c.intermediate_size;
  return 2 * (c.num_layers * per_layer + c.vocab_size * c.hidden_size);  // bf16; embedding rows not counted
}

double PrefillFlops(const ModelConfig& c, int64_t t) {
  const double layer_params = static_cast<double>(c.hidden_size) * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim +
                              static_cast<double>(c.num_heads) * c.head_dim * c.hidden_size +
                              3.0 * c.hidden_size * c.intermediate_size;
  const double attention = 2.0 * c.num_heads * c.head_dim * static_cast<double>(t) * (t + 1);  // causal QK + PV
  return c.num_layers * (2.0 * layer_params * t + attention) + 2.0 * c.vocab_size * c.hidden_size;
}

// Kernel variants of --kernel-ab (CudaBackend::SetKernelOptions), the first as before fusion.
struct KernelVariant {
  const char* name;
  bool fuse, programmatic;
  int columns_per_warp;
  int64_t streamed_max_rows;
  bool attention_programmatic, attention_combines_in_kernel, fuse_rope;
  int min_split_keys;
  bool stage_x = true;
  bool skip_attention = false;  // diagnostic: no decode attention at all (BenchBackend)
  int prewait = -1;             // CudaBackendOptions::small_m_gemv_streamed_prewait_segments
};
constexpr KernelVariant kVariants[] = {
    {"unfused, plain launch, 1 column/warp (before)", false, false, 1, 0, false, false, false, 64, false},
    {"RoPE in attention, streamed GEMV reading x per chunk (session 5)", true, true, 0, 1, false, false, true, 128, false},
    {"x staged, attention PDL + in-kernel combine (default)", true, true, 0, 1, true, true, true, 128},
    {"x staged, attention plain launch + combine kernel", true, true, 0, 1, false, false, true, 128},
    {"3 GEMV ring slots filled before the wait (not 2 for the o projection)", true, true, 0, 1, true, true, true, 128,
     true, false, 3},
    {"2 GEMV ring slots filled before the wait", true, true, 0, 1, true, true, true, 128, true, false, 2},
    {"(diagnostic) default without decode attention", true, true, 0, 1, true, true, true, 128, true, true},
};
constexpr size_t kDefaultVariant = 2;
constexpr size_t kNoSmallBatchAttentionVariant = 3;

struct StepRow {
  std::string variant;
  size_t programmatic_edges = 0;  // of the graph last captured (decode with graphs)
  std::string phase;
  int batch = 0, tokens = 0, steps = 0;
  double wall = 0, cpu = 0;  // per step, seconds (median)
};

struct StepTimes {
  std::vector<double> wall, cpu;
};

Status TimedStep(Engine& e, StepTimes* t) {
  const double w0 = WallNow(), c0 = CpuNow();
  TANDEM_ASSIGN_OR_RETURN(auto outputs, e.Step());
  const double c1 = CpuNow(), w1 = WallNow();
  for (const auto& o : outputs) {
    if (!o.status.ok()) return o.status;
  }
  t->wall.push_back(w1 - w0);
  t->cpu.push_back(c1 - c0);
  return OkStatus();
}

Request MakeRequest(int id, int len, int max_tokens, int64_t vocab) {
  Request r;
  r.request_id = std::to_string(id);
  std::mt19937 rng(static_cast<uint32_t>(id) * 7919u + 1u);
  for (int i = 0; i < len; ++i) r.prompt_token_ids.push_back(static_cast<int32_t>(rng() % vocab));
  r.sampling.temperature = 0;
  r.sampling.max_tokens = max_tokens;
  r.sampling.ignore_eos = true;
  return r;
}

// Forwards every op to a CudaBackend, with two switches for measurements:
// - host sampling (fixed): Backend::SampleRows' host default, and no decode graphs (the "before"
//   of device sampling, as it was measured);
// - skip_attention (runtime, a diagnostic of --kernel-ab): the decode steps' RopeWriteKvAttention is
//   not enqueued at all, so the step's time is the rest of the step (its tokens are garbage).
class BenchBackend final : public Backend {
 public:
  BenchBackend(std::unique_ptr<CudaBackend> inner, bool host_sampling)
      : inner_(std::move(inner)), host_sampling_(host_sampling) {}
  CudaBackend& cuda() { return *inner_; }
  void set_skip_attention(bool skip) { skip_attention_ = skip; }
  std::string_view name() const override { return inner_->name(); }
  DType activation_dtype() const override { return inner_->activation_dtype(); }
  DType kv_cache_dtype() const override { return inner_->kv_cache_dtype(); }
  Status CheckSupported(const AttentionParams& p) const override { return inner_->CheckSupported(p); }
  StatusOr<std::unique_ptr<DeviceBuffer>> Allocate(size_t bytes) override { return inner_->Allocate(bytes); }
  StatusOr<Tensor> UploadWeight(const HostTensor& host, std::unique_ptr<DeviceBuffer>* storage) override {
    return inner_->UploadWeight(host, storage);
  }
  Status CopyToDevice(const void* src, Tensor dst) override { return inner_->CopyToDevice(src, dst); }
  Status CopyToHost(const Tensor& src, void* dst) override { return inner_->CopyToHost(src, dst); }
  Status Copy(const Tensor& src, Tensor dst) override { return inner_->Copy(src, dst); }
  Status Synchronize() override { return inner_->Synchronize(); }
  std::optional<int64_t> KvCacheBudgetBytes() const override { return inner_->KvCacheBudgetBytes(); }
  Status Embedding(std::span<const int32_t> ids, const Tensor& table, Tensor out) override {
    return inner_->Embedding(ids, table, out);
  }
  Status RmsNorm(const Tensor& x, Tensor residual, const Tensor& weight, float eps, Tensor out) override {
    return inner_->RmsNorm(x, residual, weight, eps, out);
  }
  Status Linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor out) override {
    return inner_->Linear(x, weight, bias, out);
  }
  Status SiluMul(const Tensor& gate_up, Tensor out) override { return inner_->SiluMul(gate_up, out); }
  bool FusesSmallBatch(int64_t rows, std::span<const int64_t> k_dims) const override {
    return inner_->FusesSmallBatch(rows, k_dims);
  }
  Status NormLinear(const Tensor& x, const Tensor& g, float eps, const Tensor& w, const Tensor& b, Tensor out) override {
    return inner_->NormLinear(x, g, eps, w, b, out);
  }
  Status NormLinearSiluMul(const Tensor& x, const Tensor& g, float eps, const Tensor& w, const Tensor& b,
                           Tensor out) override {
    return inner_->NormLinearSiluMul(x, g, eps, w, b, out);
  }
  Status LinearAddResidual(const Tensor& x, const Tensor& w, const Tensor& b, Tensor residual) override {
    return inner_->LinearAddResidual(x, w, b, residual);
  }
  Status RopeAndWriteKv(const Tensor& qkv, Tensor q_out, const RopeTables& rope, const AttentionParams& params,
                        const AttentionMetadata& meta, KvLayerView cache) override {
    return inner_->RopeAndWriteKv(qkv, q_out, rope, params, meta, cache);
  }
  Status Attention(const Tensor& q, KvLayerView cache, const AttentionParams& params,
                   const AttentionMetadata& meta, Tensor out) override {
    return inner_->Attention(q, cache, params, meta, out);
  }
  Status RopeWriteKvAttention(const Tensor& qkv, Tensor q_scratch, const RopeTables& rope,
                              const AttentionParams& params, const AttentionMetadata& meta, KvLayerView cache,
                              Tensor out) override {
    if (skip_attention_) return OkStatus();
    return inner_->RopeWriteKvAttention(qkv, q_scratch, rope, params, meta, cache, out);
  }
  Status GatherRows(const Tensor& x, std::span<const int32_t> rows, Tensor out) override {
    return inner_->GatherRows(x, rows, out);
  }
  Status SampleRows(const Tensor& logits, std::span<const SampleInput> inputs,
                    std::span<SampleOutput> outputs) override {
    return host_sampling_ ? Backend::SampleRows(logits, inputs, outputs) : inner_->SampleRows(logits, inputs, outputs);
  }
  bool SupportsDecodeGraphs() const override { return !host_sampling_ && inner_->SupportsDecodeGraphs(); }
  Status ReserveDecodeGraphs(int32_t max_batch, int32_t max_blocks_per_seq, int32_t block_size,
                             const AttentionParams& params) override {
    return inner_->ReserveDecodeGraphs(max_batch, max_blocks_per_seq, block_size, params);
  }
  Status StageDecodeInputs(std::span<const int32_t> token_ids, const AttentionMetadata& meta,
                           int64_t num_kv_blocks) override {
    return inner_->StageDecodeInputs(token_ids, meta, num_kv_blocks);
  }
  Status RunDecodeGraph(int32_t key, bool capture, const std::function<Status()>& record) override {
    return inner_->RunDecodeGraph(key, capture, record);
  }
  void ClearDecodeGraphs() override { inner_->ClearDecodeGraphs(); }
  Status GatherKvBlocks(std::span<const KvLayerView> layers, std::span<const int32_t> block_ids,
                        void* host) override {
    return inner_->GatherKvBlocks(layers, block_ids, host);
  }
  Status ScatterKvBlocks(const void* host, std::span<const int32_t> block_ids,
                         std::span<const KvLayerView> layers) override {
    return inner_->ScatterKvBlocks(host, block_ids, layers);
  }
  Status ScatterKvBlocksFromDevice(const void* device_src, std::span<const int32_t> block_ids,
                                   std::span<const KvLayerView> layers) override {
    return inner_->ScatterKvBlocksFromDevice(device_src, block_ids, layers);
  }

 private:
  std::unique_ptr<CudaBackend> inner_;
  const bool host_sampling_;
  bool skip_attention_ = false;
};

void PrintAttentionTable(const std::vector<AttentionRow>& attn, int ctx, double read_bw) {
  std::printf("## paged attention kernel alone (decode, 1 query per sequence, context %d, one layer; one "
              "CudaBackend::Attention call between events)\n\n", ctx);
  std::printf("| batch | us | K/V MB | GB/s | of read bw |\n|---|---|---|---|---|\n");
  for (const AttentionRow& r : attn) {
    std::printf("| %d | %.1f | %.1f | %.0f | %.0f%% |\n", r.batch, r.seconds * 1e6, r.kv_bytes / 1e6,
                r.kv_bytes / r.seconds / 1e9, 100.0 * r.kv_bytes / r.seconds / read_bw);
  }
}

Status RunAttentionOnly(const std::filesystem::path& config_path) {
  ModelSourceOptions options;
  options.dummy_weights = true;
  TANDEM_ASSIGN_OR_RETURN(ModelSource source, OpenModelSource(config_path, options));
  CudaBackendOptions bo;
  bo.gpu_memory_utilization = 0.95;
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<CudaBackend> backend, CudaBackend::Create(bo));
  cudaDeviceProp prop{};
  TANDEM_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, backend->device()));
  TANDEM_ASSIGN_OR_RETURN(Limits lim, MeasureLimits(*backend));
  const std::vector<int> batches{1, 32, 64, 128, 256};
  const int ctx = 1024;
  TANDEM_ASSIGN_OR_RETURN(std::vector<AttentionRow> attn, MeasureDecodeAttention(*backend, source.config, batches, ctx));
  std::printf("\n# gpu_engine_bench --attention-only: %s (%s, %d SMs)\n\n", config_path.filename().c_str(), prop.name,
              prop.multiProcessorCount);
  std::printf("| HBM read (read probe, 4 GiB) | %.0f GB/s |\n\n", lim.read_bw / 1e9);
  PrintAttentionTable(attn, ctx, lim.read_bw);
  return bench::RunDecodeAttentionSweep(*backend, source.config, lim.read_bw, {32, 64, 128, 256}, ctx);
}

// The command line's switches of a whole run (see the top of the file).
struct RunFlags {
  bool quick = false;
  bool host_sampling = false;
  bool cuda_graphs = true;
  bool cuda_core_attention = false;
  bool kernel_ab = false;
  bool small_batch_attention = true;
  bool profile_step = false;
};

Status Run(const std::filesystem::path& config_path, const RunFlags& flags) {
  // Blocking sync: time the host spends waiting for the GPU is not thread CPU time.
  TANDEM_CUDA_RETURN_IF_ERROR(cudaSetDeviceFlags(cudaDeviceScheduleBlockingSync));
  ModelSourceOptions options;
  options.dummy_weights = true;
  TANDEM_ASSIGN_OR_RETURN(ModelSource source, OpenModelSource(config_path, options));
  const ModelConfig config = source.config;
  CudaBackendOptions bo;
  bo.gpu_memory_utilization = 0.95;
  bo.cuda_core_decode_attention = flags.cuda_core_attention;
  bo.programmatic_decode_attention = flags.small_batch_attention;
  bo.decode_attention_combines_in_kernel = flags.small_batch_attention;
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<CudaBackend> owned, CudaBackend::Create(bo));
  CudaBackend& backend = *owned;
  cudaDeviceProp prop{};
  TANDEM_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, backend.device()));

  const double t_start = WallNow();
  TANDEM_ASSIGN_OR_RETURN(Limits lim, MeasureLimits(backend));
  TANDEM_ASSIGN_OR_RETURN(std::vector<bench::DecodeGemvRow> linears,
                          bench::MeasureDecodeGemvs(backend, config, prop.multiProcessorCount));
  const std::vector<int> batches = flags.quick ? std::vector<int>{1, 32} : std::vector<int>{1, 32, 64, 128, 256};
  const int ctx = 1024;
  TANDEM_ASSIGN_OR_RETURN(std::vector<AttentionRow> attn, MeasureDecodeAttention(backend, config, batches, ctx));
  const double t_micro = WallNow();

  const int max_batch = batches.back();
  std::vector<KernelVariant> variants = {kVariants[flags.small_batch_attention ? kDefaultVariant : kNoSmallBatchAttentionVariant]};
  if (flags.kernel_ab) {  // three rounds of every variant: the spread between rounds is the noise
    variants.clear();
    for (int round = 0; round < 3; ++round) variants.insert(variants.end(), std::begin(kVariants), std::end(kVariants));
  }
  const int measured_steps = 10;
  // Output tokens per request (and the cache's size): every batch, every variant one step that
  // captures its graph, one replay and the measured steps; and the steps of the later requests'
  // prefill chunks (about max_batch * ctx / 8192), which the first requests, the ones kept for the
  // smallest batches, decode through as well.
  const int prefill_steps = max_batch * ctx / 8192 + 8;
  const int decode_tokens =
      16 + prefill_steps + static_cast<int>(batches.size() * variants.size()) * (measured_steps + 3);
  EngineConfig ec;
  ec.block_size = 16;
  ec.max_num_batched_tokens = 8192;
  ec.max_num_seqs = max_batch;
  ec.max_model_len = 8192 + 256;
  ec.enable_prefix_caching = false;
  ec.enable_cuda_graphs = flags.cuda_graphs;
  ec.num_kv_blocks = max_batch * ((ctx + decode_tokens + 15) / 16) + 8;
  auto wrapped = std::make_unique<BenchBackend>(std::move(owned), flags.host_sampling);
  BenchBackend& bench_backend = *wrapped;
  auto engine_or = Engine::Create(ec, config, std::move(source.weights), std::move(wrapped));
  if (!engine_or.ok()) return engine_or.status();
  Engine& e = **engine_or;
  const double t_load = WallNow();

  int next_id = 0;
  std::vector<StepRow> steps;
  // Warm-up: a short prompt and a few decode steps.
  TANDEM_RETURN_IF_ERROR(e.AddRequest(MakeRequest(next_id++, 16, 4, config.vocab_size)));
  while (e.HasUnfinished()) TANDEM_RETURN_IF_ERROR(e.Step().status());

  // Prefill at batch 1: one prompt, one step; median of 3.
  for (int len : {2048, 8192 - 1}) {
    StepTimes t;
    for (int rep = 0; rep < 3; ++rep) {
      TANDEM_RETURN_IF_ERROR(e.AddRequest(MakeRequest(next_id++, len, 1, config.vocab_size)));
      TANDEM_RETURN_IF_ERROR(TimedStep(e, &t));
      while (e.HasUnfinished()) TANDEM_RETURN_IF_ERROR(e.Step().status());
    }
    steps.push_back({variants.back().name, 0, "prefill", 1, len, 1, Median(t.wall), Median(t.cpu)});
  }

  // Decode: max_batch sequences with distinct 1k prompts; once all decode, time steps, then abort
  // down to each smaller batch.
  std::vector<std::string> live;
  for (int b = 0; b < max_batch; ++b) {
    live.push_back(std::to_string(next_id));
    TANDEM_RETURN_IF_ERROR(e.AddRequest(MakeRequest(next_id++, ctx - 16, decode_tokens, config.vocab_size)));
  }
  while (e.Stats().num_waiting > 0) TANDEM_RETURN_IF_ERROR(e.Step().status());
  TANDEM_RETURN_IF_ERROR(e.Step().status());  // the last prefill chunk's step is done: all decode now
  for (auto it = batches.rbegin(); it != batches.rend(); ++it) {
    const int b = *it;
    while (static_cast<int>(live.size()) > b) {
      e.Abort(live.back());
      live.pop_back();
    }
    TANDEM_RETURN_IF_ERROR(e.Step().status());  // drains the aborts' outputs
    for (const KernelVariant& v : variants) {
      CudaBackendOptions ko;
      ko.fuse_small_batch = v.fuse;
      ko.programmatic_launch = v.programmatic;
      ko.small_m_gemv_columns_per_warp = v.columns_per_warp;
      ko.programmatic_decode_attention = v.attention_programmatic;
      ko.decode_attention_combines_in_kernel = v.attention_combines_in_kernel;
      ko.small_m_gemv_streamed_max_rows = v.streamed_max_rows;
      ko.fuse_rope_decode_attention = v.fuse_rope;
      ko.decode_attention_min_split_keys = v.min_split_keys;
      ko.small_m_gemv_streamed_stage_x = v.stage_x;
      ko.small_m_gemv_streamed_prewait_segments = v.prewait;
      backend.SetKernelOptions(ko);
      bench_backend.set_skip_attention(v.skip_attention);
      for (int i = 0; i < 2; ++i) TANDEM_RETURN_IF_ERROR(e.Step().status());  // capture, replay
      StepTimes t;
      for (int i = 0; i < measured_steps; ++i) TANDEM_RETURN_IF_ERROR(TimedStep(e, &t));
      if (flags.profile_step && b == batches.front()) {
        // One more step between profiler marks: `ncu --profile-from-start off` sees its kernels alone.
        TANDEM_CUDA_RETURN_IF_ERROR(cudaProfilerStart());
        TANDEM_RETURN_IF_ERROR(e.Step().status());
        TANDEM_CUDA_RETURN_IF_ERROR(cudaProfilerStop());
      }
      if (static_cast<int>(e.Stats().num_running) != b) {
        return InternalError("decode batch " + std::to_string(b) + " ran with " +
                             std::to_string(e.Stats().num_running) + " sequences");
      }
      steps.push_back({v.name, backend.last_graph_programmatic_edges(), "decode", b, b * measured_steps,
                       measured_steps, Median(t.wall), Median(t.cpu)});
    }
  }
  for (const auto& id : live) e.Abort(id);
  (void)e.Step();
  const double t_end = WallNow();

  const double weight_bytes = static_cast<double>(WeightBytes(config));
  std::printf("\n# gpu_engine_bench: %s, dummy weights, bf16, %s sampling, decode graphs %s, %s decode attention%s "
              "(%s, %d SMs, %.1f GiB)\n\n",
              config_path.filename().c_str(), flags.host_sampling ? "host" : "device", flags.cuda_graphs ? "on" : "off",
              flags.cuda_core_attention ? "CUDA-core" : "tensor-core",
              flags.small_batch_attention ? "" : " (<= 4 seqs: plain launch + combine kernel)", prop.name,
              prop.multiProcessorCount,
              static_cast<double>(prop.totalGlobalMem) / (1 << 30));
  std::printf("wall: micro-benchmarks %.0f s, engine load %.0f s, engine phases %.0f s\n\n",
              t_micro - t_start, t_load - t_micro, t_end - t_load);
  std::printf("## limits measured in this run\n\n| limit | value |\n|---|---|\n");
  std::printf("| HBM read (read probe, 4 GiB) | %.0f GB/s |\n", lim.read_bw / 1e9);
  std::printf("| HBM copy (D2D 2 GiB, read + write) | %.0f GB/s |\n", lim.copy_bw / 1e9);
  std::printf("| cuBLAS bf16 GEMM 8192^3 | %.0f TFLOP/s |\n", lim.gemm_rate / 1e12);
  std::printf("| weight bytes per decode step | %.2f GB -> floor %.3f ms |\n\n", weight_bytes / 1e9,
              weight_bytes / lim.read_bw * 1e3);

  std::printf("## engine steps (1k context for decode; per-step medians)\n\n");
  std::printf("| kernels | phase | batch | tokens/step | step ms | tokens/s | floor ms | floor / step | host CPU ms | CPU / step | PDL graph edges |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const StepRow& r : steps) {
    const int per_step = r.phase == "prefill" ? r.tokens : r.batch;
    double floor;
    if (r.phase == "prefill") {
      floor = PrefillFlops(config, r.tokens) / lim.gemm_rate;
    } else {
      // Weights once, plus every sequence's K/V of the 1k context once.
      const double kv = 2.0 * r.batch * ctx * config.num_layers * config.num_kv_heads * config.head_dim * 2.0;
      floor = (weight_bytes + kv) / lim.read_bw;
    }
    std::printf("| %s | %s | %d | %d | %.3f | %.0f | %.3f | %.0f%% | %.3f | %.0f%% | %zu |\n", r.variant.c_str(),
                r.phase.c_str(), r.batch, per_step, r.wall * 1e3, per_step / r.wall, floor * 1e3,
                100.0 * floor / r.wall, r.cpu * 1e3, 100.0 * r.cpu / r.wall, r.programmatic_edges);
  }
  std::printf("\nprefill floor: FLOPs (matrices, causal attention, one LM-head row) / GEMM rate; "
              "MFU = floor / step. decode floor: (weights + K/V bytes) / read bandwidth.\n\n");

  PrintAttentionTable(attn, ctx, lim.read_bw);
  bench::PrintDecodeGemvTables(linears, lim.read_bw);
  return OkStatus();
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) {
  std::filesystem::path config = std::filesystem::path(TANDEM_SOURCE_ROOT) / "configs" / "models" / "llama-3.1-8b.json";
  tandem::RunFlags flags;
  bool attention_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--config" && i + 1 < argc) {
      config = argv[++i];
    } else if (a == "--quick") {
      flags.quick = true;
    } else if (a == "--host-sampling") {
      flags.host_sampling = true;
    } else if (a == "--no-cuda-graphs") {
      flags.cuda_graphs = false;
    } else if (a == "--attention-only") {
      attention_only = true;
    } else if (a == "--cuda-core-decode-attention") {
      flags.cuda_core_attention = true;
    } else if (a == "--kernel-ab") {
      flags.kernel_ab = true;
    } else if (a == "--no-small-batch-attention") {
      flags.small_batch_attention = false;
    } else if (a == "--profile-step") {
      flags.profile_step = true;
    } else {
      std::fprintf(stderr, "usage: gpu_engine_bench [--config FILE] [--quick] [--host-sampling] [--no-cuda-graphs] [--attention-only] "
                   "[--cuda-core-decode-attention] [--kernel-ab] [--no-small-batch-attention] [--profile-step]\n");
      return 2;
    }
  }
  spdlog::set_level(spdlog::level::warn);
  const tandem::Status s = attention_only ? tandem::RunAttentionOnly(config)
                                          : tandem::Run(config, flags);
  if (!s.ok()) {
    std::fprintf(stderr, "gpu_engine_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
