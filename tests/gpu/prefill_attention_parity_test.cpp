// The tensor-core prefill attention kernels, reached through CudaBackend::Attention on non-decode
// batches, against the CPU backend's attention: every case through the wgmma kernel
// (kernels/paged_prefill_attention_wgmma.cu; on a device of compute capability 9.0, else the
// backend falls back) and through the mma.sync kernel (kernels/paged_prefill_attention.cu, the
// backend's wgmma_prefill_attention option off). Fresh random inputs per case and kernel, the output
// poisoned with NaN before each run and every element compared, ||out - ref|| / ||ref|| <= 1e-2
// (bf16 operands, fp32 softmax and accumulators).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_backend_factory.h"
#include "gpu_test_support.h"

namespace tandem {
namespace {

using gpu_testing::Download;
using gpu_testing::HostF32;
using gpu_testing::Poisoned;
using gpu_testing::RandomBf16;
using gpu_testing::RelError;
using gpu_testing::Upload;

constexpr double kBf16Tolerance = 1e-2;

using Seq = gpu_testing::SeqChunk;
using PrefillCase = gpu_testing::AttentionCase;
using Batch = gpu_testing::AttentionBatch;
using gpu_testing::Describe;

Batch MakeBatch(const PrefillCase& c, std::mt19937& rng) { return gpu_testing::MakeAttentionBatch(c, 5, rng); }

class PrefillAttentionParityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gpu_ = gpu_testing::MakeGpuBackend();
    ASSERT_NE(gpu_, nullptr);
    CudaBackendOptions options;
    options.gpu_memory_utilization = 0.1;
    options.wgmma_prefill_attention = false;
    auto mma = MakeCudaBackend(options);
    ASSERT_TRUE(mma.ok()) << mma.status().ToString();
    gpu_mma_ = std::move(mma).value();
    cpu_ = std::make_unique<CpuBackend>(CpuBackendConfig{0});
  }
  void TearDown() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    const auto* cuda = dynamic_cast<const CudaBackend*>(gpu_.get());
    std::printf("[ kernel %s ] worst rel err %.3e over %d cases (wgmma %s), %.3e (mma.sync)\n", info->name(),
                worst_[0], checks_, cuda != nullptr && cuda->wgmma_prefill_attention() ? "on" : "off (fallback)",
                worst_[1]);
  }

  // One batch through the CPU backend and both GPU kernels; every output element compared.
  void Check(const PrefillCase& c) {
    CheckOn(*gpu_, c, 0);
    CheckOn(*gpu_mma_, c, 1);
    ++checks_;
  }

  void CheckOn(Backend& gpu, const PrefillCase& c, int kernel) {
    const char* name = kernel == 0 ? "wgmma" : "mma.sync";
    const Batch b = MakeBatch(c, rng_);
    const int64_t t = b.meta.num_tokens, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
    const int64_t cache_elems = static_cast<int64_t>(b.num_blocks) * nkv * c.block_size * hd;
    auto q = RandomBf16(t * nh * hd, rng_, 2.0f);
    auto kc = RandomBf16(cache_elems, rng_, 2.0f), vc = RandomBf16(cache_elems, rng_);
    const AttentionParams params{c.num_heads, c.num_kv_heads, c.head_dim,
                                 1.0f / std::sqrt(static_cast<float>(hd)), c.window};
    std::vector<float> ref(t * nh * hd);
    const KvLayerView cpu_cache{HostF32(kc, {b.num_blocks, nkv, c.block_size, hd}),
                                HostF32(vc, {b.num_blocks, nkv, c.block_size, hd})};
    ASSERT_TRUE(cpu_->Attention(HostF32(q, {t, nh * hd}), cpu_cache, params, b.meta, HostF32(ref, {t, nh * hd})).ok());
    auto dq = Upload(gpu, q, DType::kBF16, {t, nh * hd});
    auto dkc = Upload(gpu, kc, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
    auto dvc = Upload(gpu, vc, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
    auto dout = Poisoned(gpu, DType::kBF16, {t, nh * hd});
    const Status s = gpu.Attention(dq.t, {dkc.t, dvc.t}, params, b.meta, dout.t);
    ASSERT_TRUE(s.ok()) << s.ToString() << " " << name << " " << Describe(c);
    const std::vector<float> out = Download(gpu, dout.t);
    const double err = RelError(out, ref);
    worst_[kernel] = std::max(worst_[kernel], err);
    EXPECT_LE(err, kBf16Tolerance) << name << " " << Describe(c);
    if (!(err <= kBf16Tolerance)) {  // where: the first few elements off by more than the tolerance
      int shown = 0;
      for (size_t i = 0; i < out.size() && shown < 4; ++i) {
        if (std::isfinite(out[i]) && std::fabs(out[i] - ref[i]) <= 0.05f + 0.05f * std::fabs(ref[i])) continue;
        const int64_t token = static_cast<int64_t>(i) / (nh * hd), head = (static_cast<int64_t>(i) / hd) % nh;
        ADD_FAILURE() << name << " token " << token << " (position " << b.positions[token] << ") head " << head
                      << " dim " << i % hd << ": " << out[i] << " vs " << ref[i];
        ++shown;
      }
    }
  }

  std::unique_ptr<Backend> gpu_;      // default options: the wgmma kernel where the device has it
  std::unique_ptr<Backend> gpu_mma_;  // wgmma_prefill_attention off: the mma.sync kernel
  std::unique_ptr<CpuBackend> cpu_;
  std::mt19937 rng_{4321};
  double worst_[2] = {0.0, 0.0};
  int checks_ = 0;
};

// Several fresh prompts of odd lengths in one launch, every head dim x GQA ratio x block size.
TEST_F(PrefillAttentionParityTest, OddLengthsEveryShape) {
  const std::vector<Seq> odd{{0, 1}, {0, 7}, {0, 33}, {0, 127}, {0, 1000}};
  for (int32_t hd : {64, 128}) {
    for (int32_t group : {1, 4, 8}) {
      for (int32_t bs : {8, 16, 32, 64}) {
        Check({hd, 2 * group, 2, bs, 0, odd});
      }
    }
  }
}

// One K/V tile of 128 keys, exactly one, one key more: the wgmma operand layouts without the
// pipeline, then its first step.
TEST_F(PrefillAttentionParityTest, OneAndTwoKeyTiles) {
  Check({128, 1, 1, 16, 0, {{0, 32}}});
  Check({128, 2, 2, 16, 0, {{0, 64}}});
  Check({128, 1, 1, 16, 0, {{0, 128}}});
  Check({128, 1, 1, 16, 0, {{0, 129}}});
  Check({64, 1, 1, 16, 0, {{0, 64}}});
  Check({64, 4, 1, 16, 0, {{100, 32}}});
}

// Chunked prefill: a query chunk after a long cached prefix, chunks not aligned to any tile.
TEST_F(PrefillAttentionParityTest, ChunkAfterCachedPrefix) {
  Check({128, 8, 2, 16, 0, {{3000, 257}}});
  Check({128, 32, 8, 32, 0, {{1000, 64}, {77, 300}}});
  Check({64, 16, 2, 64, 0, {{2049, 111}}});
  Check({64, 4, 4, 8, 0, {{513, 40}, {0, 5}}});
}

// Decode tokens (one query each) in the same batch as prefill chunks.
TEST_F(PrefillAttentionParityTest, MixedWithDecodeTokens) {
  const std::vector<Seq> mixed{{500, 1}, {0, 77}, {1200, 1}, {64, 129}, {31, 1}, {0, 1}};
  Check({128, 32, 8, 16, 0, mixed});
  Check({128, 8, 8, 32, 0, mixed});
  Check({64, 16, 2, 16, 0, mixed});
  Check({64, 8, 1, 64, 0, mixed});
}

// Block sizes that are no multiple of the wgmma kernel's load runs (8 keys at head dim 128, 4 at 64):
// a block-table lookup per key.
TEST_F(PrefillAttentionParityTest, OddBlockSizes) {
  Check({128, 8, 2, 12, 0, {{0, 300}, {40, 77}}});
  Check({128, 4, 4, 4, 20, {{0, 1}, {100, 150}}});
  Check({64, 8, 2, 6, 0, {{33, 200}}});
}

TEST_F(PrefillAttentionParityTest, LongContexts) {
  Check({128, 8, 2, 16, 0, {{0, 4133}}});
  Check({64, 8, 2, 32, 0, {{4000, 300}, {4095, 1}}});
  Check({128, 16, 2, 64, 0, {{6000, 200}}});
}

TEST_F(PrefillAttentionParityTest, SlidingWindow) {
  Check({128, 8, 2, 16, 100, {{0, 700}, {1500, 129}, {90, 1}}});
  Check({64, 16, 2, 32, 1000, {{0, 2100}}});
  Check({128, 4, 4, 16, 37, {{0, 1}, {0, 37}, {45, 1}, {100, 19}, {16, 16}}});
  Check({64, 8, 1, 8, 64, {{300, 130}}});
}

// One small batch for compute-sanitizer (memcheck and racecheck): both head dims, a prefix, a
// decode token, a window, a chunk over three K/V tiles.
TEST_F(PrefillAttentionParityTest, SmallBatchForSanitizers) {
  Check({128, 8, 2, 16, 0, {{70, 33}, {20, 1}, {300, 40}}});
  Check({64, 4, 1, 32, 40, {{0, 90}}});
}

}  // namespace
}  // namespace tandem
