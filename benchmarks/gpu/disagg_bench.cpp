// disagg_bench: the GPU KV handoff of disaggregated serving on two GPUs (nvidia-h100-x2), beside
// the limits measured in the same run. Needs 2 visible GPUs; set NCCL_NVLS_ENABLE=0.
//
//   disagg_bench --config configs/models/llama-3.1-8b.json [--prompt-tokens 2048] [--reps 5]
//                [--sends 4]   (a comma-separated sweep of NcclKvTransportOptions::sends_per_transfer)
//
// 1. NCCL p2p: ncclSend GPU 0 -> ncclRecv GPU 1 of the KV bytes of one prompt (and 1 GiB), from
//    plain cudaMalloc buffers and from ncclMemAlloc buffers registered with NCCL (zero-copy);
//    the better of the two is the limit.
// 2. KV transfer through NcclKvTransport alone (no model): gather of every layer's blocks from
//    the paged cache on GPU 0, the sends, the receive into staging on GPU 1, the scatter into the
//    receiver's blocks (other block ids) and the verdict's round trip; bytes ÷ time beside (1).
//    The received blocks are compared with the sent ones byte for byte.
// 3. The model (dummy bf16 weights): TTFT of a prompt on a colocated engine (GPU 0) against the
//    prefill worker of a 1P+1D pair (GPU 0 -> GPU 1), whose last prefill step also streams the
//    KV; the handoff's residual time after the first token; greedy tokens of both compared.
#include <cuda_runtime_api.h>
#include <execinfo.h>
#include <nccl.h>
#include <unistd.h>

#include <csignal>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"
#include "kv/kv_cache.h"
#include "model/model_source.h"
#include "tests/gpu/disagg_pair.h"
#include "worker/engine_loop.h"

namespace tandem {
namespace {

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

Status NcclOk(ncclResult_t r, const char* what) {
  return r == ncclSuccess ? OkStatus() : InternalError(std::string(what) + ": " + ncclGetErrorString(r));
}

// Median seconds of one ncclSend(GPU 0) / ncclRecv(GPU 1) of `bytes`: plain cudaMalloc buffers,
// or (`registered`) ncclMemAlloc buffers registered with the communicators (zero-copy).
StatusOr<double> NcclP2pSeconds(size_t bytes, int reps, bool registered) {
  ncclComm_t comms[2];
  int devices[2] = {0, 1};
  TANDEM_RETURN_IF_ERROR(NcclOk(ncclCommInitAll(comms, 2, devices), "ncclCommInitAll"));
  void* buf[2];
  void* handles[2] = {nullptr, nullptr};
  cudaStream_t streams[2];
  for (int d = 0; d < 2; ++d) {
    TANDEM_CUDA_RETURN_IF_ERROR(cudaSetDevice(d));
    if (registered) {
      TANDEM_RETURN_IF_ERROR(NcclOk(ncclMemAlloc(&buf[d], bytes), "ncclMemAlloc"));
      TANDEM_RETURN_IF_ERROR(NcclOk(ncclCommRegister(comms[d], buf[d], bytes, &handles[d]), "ncclCommRegister"));
    } else {
      TANDEM_CUDA_RETURN_IF_ERROR(cudaMalloc(&buf[d], bytes));
    }
    TANDEM_CUDA_RETURN_IF_ERROR(cudaMemset(buf[d], d + 1, bytes));
    TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&streams[d], cudaStreamNonBlocking));
  }
  std::vector<double> times;
  for (int r = 0; r < reps + 1; ++r) {
    const auto t0 = Clock::now();
    TANDEM_RETURN_IF_ERROR(NcclOk(ncclGroupStart(), "ncclGroupStart"));
    TANDEM_RETURN_IF_ERROR(NcclOk(ncclSend(buf[0], bytes, ncclUint8, 1, comms[0], streams[0]), "ncclSend"));
    TANDEM_RETURN_IF_ERROR(NcclOk(ncclRecv(buf[1], bytes, ncclUint8, 0, comms[1], streams[1]), "ncclRecv"));
    TANDEM_RETURN_IF_ERROR(NcclOk(ncclGroupEnd(), "ncclGroupEnd"));
    for (int d = 0; d < 2; ++d) {
      TANDEM_CUDA_RETURN_IF_ERROR(cudaSetDevice(d));
      TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(streams[d]));
    }
    if (r > 0) times.push_back(Seconds(t0, Clock::now()));  // the first run connects the pair
  }
  for (int d = 0; d < 2; ++d) {
    (void)cudaSetDevice(d);
    if (registered) {
      (void)ncclCommDeregister(comms[d], handles[d]);
      (void)ncclMemFree(buf[d]);
    } else {
      (void)cudaFree(buf[d]);
    }
    (void)cudaStreamDestroy(streams[d]);
    (void)ncclCommDestroy(comms[d]);
  }
  return Median(times);
}

std::vector<KvLayerView> Layers(const KvCache& cache) {
  std::vector<KvLayerView> v;
  for (int32_t l = 0; l < cache.shape().num_layers; ++l) v.push_back(cache.layer(l));
  return v;
}

struct TransferResult {
  double enqueued = 0;         // Begin until the sender's calls returned (every send enqueued)
  double seconds = 0;          // Begin until the data is in the receiver's staging
  double with_verdict = 0;     // Begin until Send returned (scatter and the ack's round trip too)
  size_t bytes = 0;
  bool exact = false;
};

// NcclKvTransport alone: KV caches of the model's geometry on both GPUs, random contents.
StatusOr<TransferResult> MeasureTransport(const ModelConfig& config, int32_t prompt_tokens, int reps,
                                          int32_t sends_per_transfer) {
  KvCacheShape shape;
  shape.num_layers = static_cast<int32_t>(config.num_layers);
  shape.block_size = 16;
  shape.num_kv_heads = static_cast<int32_t>(config.num_kv_heads);
  shape.head_dim = static_cast<int32_t>(config.head_dim);
  shape.dtype = DType::kBF16;
  const int32_t blocks = (prompt_tokens + 15) / 16;
  shape.num_blocks = 2 * blocks + 8;
  TANDEM_ASSIGN_OR_RETURN(auto a, CudaBackend::Create(CudaBackendOptions{0, 0.9}));
  TANDEM_ASSIGN_OR_RETURN(auto b, CudaBackend::Create(CudaBackendOptions{1, 0.9}));
  TANDEM_ASSIGN_OR_RETURN(auto cache_a, KvCache::Create(*a, shape));
  TANDEM_ASSIGN_OR_RETURN(auto cache_b, KvCache::Create(*b, shape));
  const auto layers_a = Layers(*cache_a), layers_b = Layers(*cache_b);
  std::mt19937 rng(3);
  for (const auto& layer : layers_a) {
    for (const Tensor& t : {layer.k, layer.v}) {
      std::vector<uint16_t> bits(t.nbytes() / 2);
      for (auto& x : bits) x = static_cast<uint16_t>(rng() & 0x7f7f);
      TANDEM_RETURN_IF_ERROR(a->CopyToDevice(bits.data(), t));
    }
  }
  KvGeometry geometry{shape.num_layers, shape.block_size, shape.num_kv_heads, shape.head_dim, shape.dtype};
  NcclKvTransportOptions options;
  options.staging_bytes = 2 * KvBlocksHostBytes(layers_a, static_cast<size_t>(blocks)) + (size_t{16} << 20);
  options.sends_per_transfer = sends_per_transfer;
  TANDEM_ASSIGN_OR_RETURN(auto sender, NcclKvTransport::Create(*a, layers_a, geometry, options));
  TANDEM_ASSIGN_OR_RETURN(auto receiver, NcclKvTransport::Create(*b, layers_b, geometry, options));
  // Sender blocks: every other block; receiver blocks: the last ones, in reverse.
  std::vector<int32_t> send_ids, recv_ids;
  for (int32_t i = 0; i < blocks; ++i) {
    send_ids.push_back(2 * i);
    recv_ids.push_back(shape.num_blocks - 1 - i);
  }
  KvReceiveHandler handler;
  handler.accept = [](const KvHandoff&) { return OkStatus(); };
  Clock::time_point received;
  handler.complete = [&](KvHandoff h) {
    received = Clock::now();  // the receiver saw every byte arrive
    return b->ScatterKvBlocksFromDevice(h.device_data, recv_ids, layers_b);
  };
  handler.fail = [](const std::string&, const Status&) {};
  TANDEM_ASSIGN_OR_RETURN(std::string endpoint, receiver->Listen("127.0.0.1:0", handler));
  std::vector<double> enqueued, times, totals;
  for (int r = 0; r < reps + 1; ++r) {
    const std::string id = "t" + std::to_string(r);
    TANDEM_RETURN_IF_ERROR(sender->Prepare(endpoint, id));
    TANDEM_RETURN_IF_ERROR(a->Synchronize());
    const auto t0 = Clock::now();
    TANDEM_ASSIGN_OR_RETURN(bool started, sender->Begin(id, send_ids, prompt_tokens));
    if (!started) return ResourceExhaustedError("no staging for the benchmark transfer");
    for (int32_t l = 0; l < shape.num_layers; ++l) TANDEM_RETURN_IF_ERROR(sender->LayerWritten(l));
    sender->Commit(id, 1);
    const auto t_enqueued = Clock::now();
    KvHandoff handoff;
    handoff.request_id = id;
    handoff.streamed = true;
    TANDEM_RETURN_IF_ERROR(sender->Send(endpoint, handoff));
    if (r > 0) {
      enqueued.push_back(Seconds(t0, t_enqueued));
      times.push_back(Seconds(t0, received));
      totals.push_back(Seconds(t0, Clock::now()));
    }
    sender->Forget(id);
  }
  TransferResult result;
  result.enqueued = Median(enqueued);
  result.seconds = Median(times);
  result.with_verdict = Median(totals);
  result.bytes = KvBlocksHostBytes(layers_a, static_cast<size_t>(blocks));
  std::vector<std::byte> sent(result.bytes), got(result.bytes);
  TANDEM_RETURN_IF_ERROR(a->GatherKvBlocks(layers_a, send_ids, sent.data()));
  TANDEM_RETURN_IF_ERROR(b->GatherKvBlocks(layers_b, recv_ids, got.data()));
  result.exact = sent == got;
  receiver->Shutdown();
  sender->Shutdown();
  return result;
}

StatusOr<std::unique_ptr<Engine>> MakeEngine(const std::filesystem::path& config_path, EngineRole role,
                                             int device, int32_t prompt_tokens) {
  ModelSourceOptions options;
  options.dummy_weights = true;
  TANDEM_ASSIGN_OR_RETURN(ModelSource source, OpenModelSource(config_path, options));
  TANDEM_ASSIGN_OR_RETURN(auto backend, CudaBackend::Create(CudaBackendOptions{device, 0.9}));
  EngineConfig ec;
  ec.role = role;
  ec.block_size = 16;
  ec.max_num_batched_tokens = std::max(2048, prompt_tokens);
  ec.max_num_seqs = 64;
  ec.max_model_len = prompt_tokens + 512;
  ec.enable_prefix_caching = false;  // every repetition computes its whole prompt
  ec.num_kv_blocks = 8 * ((prompt_tokens + 512) / 16 + 1);
  return Engine::Create(ec, source.config, std::move(source.weights), std::unique_ptr<Backend>(std::move(backend)));
}

Request PromptRequest(const std::string& id, int32_t tokens, int32_t max_tokens, int64_t vocab, int salt) {
  Request r;
  r.request_id = id;
  std::mt19937 rng(static_cast<uint32_t>(salt));
  for (int32_t i = 0; i < tokens; ++i) r.prompt_token_ids.push_back(static_cast<TokenId>(rng() % vocab));
  r.sampling.temperature = 0.0f;
  r.sampling.max_tokens = max_tokens;
  r.sampling.ignore_eos = true;
  r.arrival_time = Clock::now();
  return r;
}

struct ColocatedRun {
  double ttft = 0;
  std::vector<TokenId> tokens;
};

StatusOr<ColocatedRun> RunColocated(EngineLoop& loop, Request request) {
  auto done = std::make_shared<std::promise<void>>();
  auto run = std::make_shared<ColocatedRun>();
  const auto t0 = Clock::now();
  TANDEM_RETURN_IF_ERROR(loop.Submit(std::move(request), [run, done, t0](RequestOutput out) {
    if (!out.new_tokens.empty() && run->tokens.empty()) run->ttft = Seconds(t0, Clock::now());
    for (const auto& t : out.new_tokens) run->tokens.push_back(t.token);
    if (out.finished) done->set_value();
  }));
  done->get_future().wait();
  return *run;
}

Status Run(const std::filesystem::path& config_path, int32_t prompt_tokens, int reps,
           const std::vector<int32_t>& sends_sweep) {
  int devices = 0;
  TANDEM_CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&devices));
  if (devices < 2) return FailedPreconditionError("disagg_bench needs two GPUs, found " + std::to_string(devices));
  cudaDeviceProp prop{};
  TANDEM_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, 0));
  ModelSourceOptions probe_options;
  probe_options.dummy_weights = true;
  TANDEM_ASSIGN_OR_RETURN(ModelSource probe, OpenModelSource(config_path, probe_options));
  const ModelConfig config = probe.config;
  probe.weights.reset();
  std::printf("\n# disagg_bench: %s (dummy bf16 weights), %d-token prompts, 2 x %s\n\n",
              config_path.filename().c_str(), prompt_tokens, prop.name);

  bool exact = true;
  // The limit: NCCL p2p of the same bytes, plain and with registered (zero-copy) buffers; every
  // transfer row is read against the better of the two.
  const size_t kv_bytes = static_cast<size_t>(config.num_layers) * 2 * static_cast<size_t>((prompt_tokens + 15) / 16) *
                          16 * static_cast<size_t>(config.num_kv_heads * config.head_dim) * 2;
  TANDEM_ASSIGN_OR_RETURN(double p2p_plain, NcclP2pSeconds(kv_bytes, reps, false));
  TANDEM_ASSIGN_OR_RETURN(double p2p_reg, NcclP2pSeconds(kv_bytes, reps, true));
  TANDEM_ASSIGN_OR_RETURN(double p2p_gib, NcclP2pSeconds(size_t{1} << 30, reps, false));
  TANDEM_ASSIGN_OR_RETURN(double p2p_gib_reg, NcclP2pSeconds(size_t{1} << 30, reps, true));
  const double p2p_gbps = static_cast<double>(kv_bytes) / std::min(p2p_plain, p2p_reg) / 1e9;
  std::printf("| NCCL p2p, %.1f MB | GB/s | ms |\n|---|---|---|\n", kv_bytes / 1e6);
  std::printf("| cudaMalloc buffers | %.1f | %.3f |\n", kv_bytes / p2p_plain / 1e9, p2p_plain * 1e3);
  std::printf("| ncclMemAlloc + ncclCommRegister | %.1f | %.3f |\n", kv_bytes / p2p_reg / 1e9, p2p_reg * 1e3);
  std::printf("| 1 GiB, cudaMalloc / registered | %.1f / %.1f | |\n\n", (1 << 30) / p2p_gib / 1e9,
              (1 << 30) / p2p_gib_reg / 1e9);
  std::printf("| sends / transfer | KV bytes | sends enqueued ms | KV at receiver ms | KV transfer GB/s | of best p2p | with scatter + verdict ms | bytes equal |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (int32_t sends : sends_sweep) {
    TANDEM_ASSIGN_OR_RETURN(TransferResult transfer, MeasureTransport(config, prompt_tokens, reps, sends));
    if (transfer.bytes != kv_bytes) return InternalError("KV byte count mismatch");
    const double gbps = static_cast<double>(transfer.bytes) / transfer.seconds / 1e9;
    std::printf("| %d | %.1f MB | %.3f | %.3f | %.1f | %.0f%% | %.3f | %s |\n", sends, transfer.bytes / 1e6,
                transfer.enqueued * 1e3, transfer.seconds * 1e3, gbps, 100.0 * gbps / p2p_gbps,
                transfer.with_verdict * 1e3, transfer.exact ? "yes" : "NO");
    exact = exact && transfer.exact;
  }
  std::printf("\n");

  // Colocated baseline on GPU 0.
  std::vector<double> coloc_ttft;
  std::vector<std::vector<TokenId>> coloc_tokens;
  {
    TANDEM_ASSIGN_OR_RETURN(auto engine, MakeEngine(config_path, EngineRole::kColocated, 0, prompt_tokens));
    EngineLoop loop(std::move(engine));
    (void)RunColocated(loop, PromptRequest("warm", 64, 2, config.vocab_size, 99));
    for (int r = 0; r < reps; ++r) {
      TANDEM_ASSIGN_OR_RETURN(ColocatedRun run,
                              RunColocated(loop, PromptRequest("c" + std::to_string(r), prompt_tokens, 16,
                                                               config.vocab_size, r)));
      coloc_ttft.push_back(run.ttft);
      coloc_tokens.push_back(run.tokens);
    }
    (void)loop.Shutdown(Clock::now());
  }
  // 1P + 1D.
  std::vector<double> ttft, residual, second;
  int equal = 0;
  {
    TANDEM_ASSIGN_OR_RETURN(auto prefill, MakeEngine(config_path, EngineRole::kPrefill, 0, prompt_tokens));
    TANDEM_ASSIGN_OR_RETURN(auto decode, MakeEngine(config_path, EngineRole::kDecode, 1, prompt_tokens));
    NcclKvTransportOptions options;
    options.staging_bytes = size_t{2} << 30;
    TANDEM_ASSIGN_OR_RETURN(auto pair,
                            gpu_testing::DisaggPair::Create(std::move(prefill), std::move(decode), options));
    {
      TANDEM_ASSIGN_OR_RETURN(auto warm, pair->Start(PromptRequest("warm", 64, 2, config.vocab_size, 99)));
      TANDEM_RETURN_IF_ERROR(pair->Finish(*warm));
    }
    for (int r = 0; r < reps; ++r) {
      TANDEM_ASSIGN_OR_RETURN(auto run, pair->Start(PromptRequest("d" + std::to_string(r), prompt_tokens, 16,
                                                                  config.vocab_size, r)));
      TANDEM_RETURN_IF_ERROR(pair->Finish(*run));
      ttft.push_back(Seconds(run->submitted, run->first_token));
      residual.push_back(Seconds(run->first_token, run->handed_off));
      second.push_back(Seconds(run->submitted, run->second_token));
      if (run->tokens == coloc_tokens[static_cast<size_t>(r)]) ++equal;
    }
  }
  const double c = Median(coloc_ttft), d = Median(ttft);
  std::printf("| prompt | colocated TTFT ms | 1P+1D TTFT ms | TTFT added | handoff after first token ms | 1P+1D second token ms | greedy equal |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  std::printf("| %d tokens | %.2f | %.2f | %+.1f%% | %.2f | %.2f | %d / %d |\n\n", prompt_tokens, c * 1e3, d * 1e3,
              100.0 * (d - c) / c, Median(residual) * 1e3, Median(second) * 1e3, equal, reps);
  return equal == reps && exact ? OkStatus() : InternalError("disaggregated outputs differ");
}

}  // namespace
}  // namespace tandem

// A crash inside a library (NCCL) leaves no message: print the stack (exported symbols) first.
void PrintStackAndDie(int sig) {
  void* frames[64];
  const int n = backtrace(frames, 64);
  const char msg[] = "disagg_bench: fatal signal; stack:\n";
  (void)!write(STDERR_FILENO, msg, sizeof(msg) - 1);
  backtrace_symbols_fd(frames, n, STDERR_FILENO);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

int main(int argc, char** argv) {
  std::signal(SIGSEGV, PrintStackAndDie);
  std::signal(SIGABRT, PrintStackAndDie);
  std::signal(SIGBUS, PrintStackAndDie);
  std::string config = "configs/models/llama-3.1-8b.json";
  int32_t prompt_tokens = 2048;
  int reps = 5;
  std::vector<int32_t> sends = {4};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--config" && i + 1 < argc) {
      config = argv[++i];
    } else if (a == "--prompt-tokens" && i + 1 < argc) {
      prompt_tokens = std::atoi(argv[++i]);
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::atoi(argv[++i]);
    } else if (a == "--sends" && i + 1 < argc) {  // comma-separated sends-per-transfer sweep
      sends.clear();
      for (std::string v = argv[++i]; !v.empty();) {
        const size_t comma = v.find(',');
        sends.push_back(std::atoi(v.substr(0, comma).c_str()));
        v = comma == std::string::npos ? "" : v.substr(comma + 1);
      }
    } else {
      std::fprintf(stderr,
                   "usage: disagg_bench [--config PATH] [--prompt-tokens N] [--reps N] [--sends 2,4,8]\n");
      return 2;
    }
  }
  tandem::Status s = tandem::Run(config, prompt_tokens, reps, sends);
  if (!s.ok()) {
    std::fprintf(stderr, "disagg_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
