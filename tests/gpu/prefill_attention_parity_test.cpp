// The tensor-core prefill attention kernel (kernels/paged_prefill_attention.cu), reached through
// CudaBackend::Attention on non-decode batches, against the CPU backend's attention: fresh random
// inputs per case, the output poisoned with NaN before each run and every element compared,
// ||out - ref|| / ||ref|| <= 1e-2 (bf16 operands, fp32 softmax and accumulators).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
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
    cpu_ = std::make_unique<CpuBackend>(CpuBackendConfig{0});
  }
  void TearDown() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::printf("[ kernel %s ] worst rel err %.3e over %d cases\n", info->name(), worst_, checks_);
  }

  // One batch through both backends; every output element compared.
  void Check(const PrefillCase& c) {
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
    auto dq = Upload(*gpu_, q, DType::kBF16, {t, nh * hd});
    auto dkc = Upload(*gpu_, kc, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
    auto dvc = Upload(*gpu_, vc, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
    auto dout = Poisoned(*gpu_, DType::kBF16, {t, nh * hd});
    const Status s = gpu_->Attention(dq.t, {dkc.t, dvc.t}, params, b.meta, dout.t);
    ASSERT_TRUE(s.ok()) << s.ToString() << " " << Describe(c);
    const double err = RelError(Download(*gpu_, dout.t), ref);
    worst_ = std::max(worst_, err);
    ++checks_;
    EXPECT_LE(err, kBf16Tolerance) << Describe(c);
  }

  std::unique_ptr<Backend> gpu_;
  std::unique_ptr<CpuBackend> cpu_;
  std::mt19937 rng_{4321};
  double worst_ = 0.0;
  int checks_ = 0;
};

// Several fresh prompts of odd lengths in one launch, every head dim x GQA ratio x block size.
TEST_F(PrefillAttentionParityTest, OddLengthsEveryShape) {
  const std::vector<Seq> odd{{0, 1}, {0, 7}, {0, 33}, {0, 127}, {0, 1000}};
  for (int32_t hd : {64, 128}) {
    for (int32_t group : {1, 4, 8}) {
      for (int32_t bs : {16, 32, hd == 64 ? 8 : 64}) {
        Check({hd, 2 * group, 2, bs, 0, odd});
      }
    }
  }
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
// decode token, a window.
TEST_F(PrefillAttentionParityTest, SmallBatchForSanitizers) {
  Check({128, 8, 2, 16, 0, {{70, 33}, {20, 1}}});
  Check({64, 4, 1, 32, 40, {{0, 90}}});
}

}  // namespace
}  // namespace tandem
