// The GPU KV handoff: CudaBackend's block gather/scatter against the CPU backend (exact copies),
// and 1P+1D disaggregation in one process over NCCL — a prefill engine on GPU 0 streaming each
// prompt's KV layer by layer during its last prefill step to a decode engine on GPU 1 — whose
// greedy outputs must equal a colocated engine's (one request at a time: the same kernels on the
// same inputs) and the HF goldens wherever their margins allow (all prompts at once). KV pools and
// the transports' staging are whole afterwards; a dead receiver is an error, not a hang.
#ifdef TANDEM_WITH_NCCL

#include <gtest/gtest.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <future>
#include <thread>
#include <map>
#include <mutex>
#include <set>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_backend_factory.h"
#include "gpu_test_support.h"
#include "kv/kv_cache.h"
#include "model/model_config.h"
#include "model/safetensors_checkpoint.h"
#include "support/engine_fixture.h"
#include "support/golden.h"
#include "transfer/nccl/nccl_kv_transport.h"
#include "disagg_pair.h"
#include "worker/engine_loop.h"

namespace tandem {
namespace {

int DeviceCount() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

std::vector<KvLayerView> Layers(const KvCache& cache) {
  std::vector<KvLayerView> v;
  for (int32_t l = 0; l < cache.shape().num_layers; ++l) v.push_back(cache.layer(l));
  return v;
}

TEST(KvBlockCopyParityTest, GatherAndScatterMatchTheCpuBackendByteForByte) {
  auto gpu = gpu_testing::MakeGpuBackend(0.5);
  ASSERT_NE(gpu, nullptr);
  CpuBackend cpu(CpuBackendConfig{1});
  std::mt19937 rng(11);
  for (int32_t head_dim : {64, 128}) {
    KvCacheShape shape;
    shape.num_layers = 3;
    shape.num_blocks = 40;
    shape.block_size = 16;
    shape.num_kv_heads = 2;
    shape.head_dim = head_dim;
    shape.dtype = DType::kBF16;
    auto gpu_cache = KvCache::Create(*gpu, shape);
    auto cpu_cache = KvCache::Create(cpu, shape);
    ASSERT_TRUE(gpu_cache.ok() && cpu_cache.ok());
    const auto gpu_layers = Layers(**gpu_cache), cpu_layers = Layers(**cpu_cache);
    // Random bf16 bits in both caches (the same bytes).
    for (size_t l = 0; l < gpu_layers.size(); ++l) {
      for (auto [g, c] : {std::pair(gpu_layers[l].k, cpu_layers[l].k), std::pair(gpu_layers[l].v, cpu_layers[l].v)}) {
        std::vector<uint16_t> bits(c.nbytes() / 2);
        for (auto& b : bits) b = static_cast<uint16_t>(rng() & 0x7f7f);
        std::memcpy(c.data, bits.data(), c.nbytes());
        ASSERT_TRUE(gpu->CopyToDevice(bits.data(), g).ok());
      }
    }
    std::vector<int32_t> ids = {7, 0, 39, 12, 13, 5, 21};
    const size_t bytes = KvBlocksHostBytes(gpu_layers, ids.size());
    std::vector<std::byte> from_gpu(bytes, std::byte{0xff}), from_cpu(bytes, std::byte{0});
    ASSERT_TRUE(gpu->GatherKvBlocks(gpu_layers, ids, from_gpu.data()).ok());
    ASSERT_TRUE(cpu.GatherKvBlocks(cpu_layers, ids, from_cpu.data()).ok());
    EXPECT_EQ(from_gpu, from_cpu) << "gather, head_dim " << head_dim;
    // Scatter into other blocks (independent ids), then read them back through the CPU gather.
    std::vector<int32_t> other = {30, 31, 1, 2, 3, 38, 9};
    ASSERT_TRUE(gpu->ScatterKvBlocks(from_cpu.data(), other, gpu_layers).ok());
    std::vector<std::byte> back(bytes, std::byte{0x55});
    ASSERT_TRUE(gpu->GatherKvBlocks(gpu_layers, other, back.data()).ok());
    EXPECT_EQ(back, from_cpu) << "scatter, head_dim " << head_dim;
  }
}

// ---- 1P + 1D over NCCL, in one process -------------------------------------------------------------

std::unique_ptr<Engine> MakeEngine(const std::string& model, EngineRole role, int device) {
  const auto dir = gpu_testing::GpuModelDir(model);
  auto model_config = LoadModelConfig(dir);
  auto weights = SafetensorsCheckpoint::Open(dir);
  if (!model_config.ok() || !weights.ok()) {
    ADD_FAILURE() << "cannot open " << dir;
    return nullptr;
  }
  auto backend = MakeCudaBackend(CudaBackendOptions{device, 0.3});
  if (!backend.ok()) {
    ADD_FAILURE() << backend.status().ToString();
    return nullptr;
  }
  EngineConfig config;
  config.role = role;
  config.block_size = 16;
  config.num_kv_blocks = 512;
  config.max_num_batched_tokens = 512;
  auto engine = Engine::Create(config, *model_config, std::move(weights).value(), std::move(backend).value());
  if (!engine.ok()) {
    ADD_FAILURE() << engine.status().ToString();
    return nullptr;
  }
  return std::move(engine).value();
}

NcclKvTransportOptions TestTransportOptions() {
  NcclKvTransportOptions options;
  options.transport.io_timeout = std::chrono::milliseconds(3000);
  options.staging_bytes = size_t{64} << 20;
  return options;
}

using gpu_testing::DisaggPair;

std::unique_ptr<DisaggPair> MakePair(const std::string& model) {
  auto decode = MakeEngine(model, EngineRole::kDecode, 1);
  auto prefill = MakeEngine(model, EngineRole::kPrefill, 0);
  if (!decode || !prefill) return nullptr;
  auto pair = DisaggPair::Create(std::move(prefill), std::move(decode), TestTransportOptions());
  if (!pair.ok()) {
    ADD_FAILURE() << pair.status().ToString();
    return nullptr;
  }
  return std::move(pair).value();
}

std::shared_ptr<DisaggPair::Run> Start(DisaggPair& d, Request request) {
  auto run = d.Start(std::move(request));
  if (!run.ok()) {
    ADD_FAILURE() << run.status().ToString();
    return nullptr;
  }
  return *run;
}

void ExpectWhole(DisaggPair& d) {
  for (int i = 0; i < 200; ++i) {  // the loops publish stats after their next step or command
    const auto p = d.prefill().Stats().engine.blocks, q = d.decode().Stats().engine.blocks;
    if (p.num_in_use == 0 && q.num_in_use == 0 && d.sender().staging_bytes_in_use() == 0 &&
        d.receiver().staging_bytes_in_use() == 0) {
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ADD_FAILURE() << "KV blocks or staging still in use: prefill " << d.prefill().Stats().engine.blocks.num_in_use
                << " blocks, decode " << d.decode().Stats().engine.blocks.num_in_use << " blocks, staging "
                << d.sender().staging_bytes_in_use() << " / " << d.receiver().staging_bytes_in_use() << " bytes";
}

class NcclDisaggTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (DeviceCount() < 2) GTEST_SKIP() << "needs two GPUs (run on nvidia-h100-x2)";
  }
};

TEST_P(NcclDisaggTest, GreedyOutputsEqualColocatedOneAtATime) {
  testing::Goldens goldens =
      testing::Goldens::FromFile(gpu_testing::GpuModelDir(GetParam()) / "goldens.safetensors");
  ASSERT_TRUE(goldens.ok());
  std::map<int, std::vector<TokenId>> colocated;
  {
    auto engine = MakeEngine(GetParam(), EngineRole::kColocated, 0);
    ASSERT_NE(engine, nullptr);
    for (int p = 0; p < goldens.NumPrompts(); ++p) {
      auto prompt = testing::ToTokens(goldens.Int64("p" + std::to_string(p) + ".input_ids").values);
      ASSERT_TRUE(engine->AddRequest(testing::GreedyRequest("c" + std::to_string(p), prompt, 24)).ok());
      auto done = testing::RunToCompletion(*engine);
      colocated[p] = done.at("c" + std::to_string(p)).tokens;
    }
  }
  auto pair = MakePair(GetParam());
  ASSERT_NE(pair, nullptr);
  DisaggPair& d = *pair;
  for (int p = 0; p < goldens.NumPrompts(); ++p) {
    auto prompt = testing::ToTokens(goldens.Int64("p" + std::to_string(p) + ".input_ids").values);
    auto run = Start(d, testing::GreedyRequest("d" + std::to_string(p), prompt, 24));
    ASSERT_NE(run, nullptr);
    ASSERT_TRUE(d.Finish(*run).ok()) << "p" << p;
    EXPECT_EQ(run->tokens, colocated[p]) << "p" << p << ": disaggregated over NCCL vs colocated";
  }
  ExpectWhole(d);
}

TEST_P(NcclDisaggTest, ConcurrentRequestsStreamInBatchesAndMatchTheGoldens) {
  testing::Goldens goldens =
      testing::Goldens::FromFile(gpu_testing::GpuModelDir(GetParam()) / "goldens.safetensors");
  ASSERT_TRUE(goldens.ok());
  auto pair = MakePair(GetParam());
  ASSERT_NE(pair, nullptr);
  DisaggPair& d = *pair;
  std::vector<std::shared_ptr<DisaggPair::Run>> runs;
  for (int round = 0; round < 3; ++round) {  // later rounds hit the prefill worker's prefix cache
    for (int p = 0; p < goldens.NumPrompts(); ++p) {
      auto prompt = testing::ToTokens(goldens.Int64("p" + std::to_string(p) + ".input_ids").values);
      const int32_t max_tokens = static_cast<int32_t>(goldens.Int64("p" + std::to_string(p) + ".greedy_ids").values.size());
      runs.push_back(Start(d, testing::GreedyRequest("r" + std::to_string(round) + "p" + std::to_string(p), prompt,
                                                    max_tokens)));
    }
  }
  for (size_t i = 0; i < runs.size(); ++i) {
    ASSERT_NE(runs[i], nullptr);
    ASSERT_TRUE(d.Finish(*runs[i]).ok()) << runs[i]->id;
    const int p = static_cast<int>(i % static_cast<size_t>(goldens.NumPrompts()));
    auto greedy = goldens.Int64("p" + std::to_string(p) + ".greedy_ids").values;
    auto top = goldens.Float("p" + std::to_string(p) + ".greedy_top8_values").values;
    ASSERT_EQ(runs[i]->tokens.size(), greedy.size()) << runs[i]->id;
    for (size_t t = 0; t < greedy.size(); ++t) {
      if (top[t * 8] - top[t * 8 + 1] <= 0.1f) break;  // past a near-tie bf16 may pick the other
      ASSERT_EQ(runs[i]->tokens[t], greedy[t]) << runs[i]->id << " token " << t;
    }
  }
  ExpectWhole(d);
}

TEST_P(NcclDisaggTest, AHungReceiverFailsTheTransferAndTheLinkIsRebuilt) {
  auto pair = MakePair(GetParam());
  ASSERT_NE(pair, nullptr);
  DisaggPair& d = *pair;
  // A connection to a port nobody listens on is refused at once.
  EXPECT_EQ(d.sender().Prepare("127.0.0.1:1", "nobody").code(), StatusCode::kUnavailable);
  auto warm = Start(d, testing::GreedyRequest("warm", testing::SyntheticPrompt(40), 4));
  ASSERT_NE(warm, nullptr);
  ASSERT_TRUE(d.Finish(*warm).ok());
  // The decode side stops answering (its engine hangs longer than the I/O timeout of 3 s): the
  // sender gives up, aborts the communicator and fails the request.
  d.set_complete_delay(std::chrono::milliseconds(4500));
  auto hung = Start(d, testing::GreedyRequest("hung", testing::SyntheticPrompt(300, 1), 4));
  ASSERT_NE(hung, nullptr);
  const auto start = Clock::now();
  Status s = d.Finish(*hung);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("[ nccl ] hung receiver: %s after %.2f s\n", s.ToString().c_str(), seconds);
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  EXPECT_LT(seconds, 5.0);
  // The next request builds a new communicator and goes through.
  d.set_complete_delay(std::chrono::milliseconds(0));
  std::this_thread::sleep_for(std::chrono::milliseconds(2000));  // the hung handler returns
  auto after = Start(d, testing::GreedyRequest("after", testing::SyntheticPrompt(60, 2), 4));
  ASSERT_NE(after, nullptr);
  EXPECT_TRUE(d.Finish(*after).ok());
  EXPECT_EQ(after->tokens.size(), 4u);
  ExpectWhole(d);
}

INSTANTIATE_TEST_SUITE_P(Models, NcclDisaggTest, ::testing::Values("tiny-llama", "tiny-llama31"));

}  // namespace
}  // namespace tandem

#endif  // TANDEM_WITH_NCCL
