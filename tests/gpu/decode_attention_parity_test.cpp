// The split-KV decode attention kernels (kernels/paged_decode_attention.cu) launched directly, each
// kernel (tensor-core, CUDA-core, and the engine's choice) at every split count a policy can pick
// (one, a few, more splits than a short sequence has keys, the policy's own), against the CPU
// backend's attention: fresh random inputs per case, the output and the split workspace poisoned
// with NaN before each launch and every output element compared, ||out - ref|| / ||ref|| <= 1e-2.
// Shapes: head dims 64 / 128 / 256, GQA groups 1-8 (3 and 5 padded up), block sizes that hold whole
// 16-key tiles and ones that do not, odd lengths, sliding windows, contexts of 8k to 32k.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_backend.h"
#include "gpu_test_support.h"
#include "kernels/paged_decode_attention.cuh"

namespace tandem {
namespace {

using gpu_testing::Download;
using gpu_testing::HostF32;
using gpu_testing::Poisoned;
using gpu_testing::RandomBf16;
using gpu_testing::RelError;
using gpu_testing::Upload;
using kernels::PagedDecodeKernel;

constexpr double kBf16Tolerance = 1e-2;

using DecodeCase = gpu_testing::AttentionCase;
using gpu_testing::Describe;

// One decode query per sequence at the end of a context of `len` tokens.
DecodeCase Decodes(int32_t hd, int32_t nh, int32_t nkv, int32_t bs, int32_t window, const std::vector<int32_t>& lens) {
  DecodeCase c{hd, nh, nkv, bs, window, {}};
  for (int32_t len : lens) c.seqs.push_back({len - 1, 1});
  return c;
}

std::vector<DecodeCase> Cases() {
  std::vector<DecodeCase> cases;
  const std::vector<int32_t> mixed{1, 17, 300, 1023, 64, 65, 16};
  for (int32_t hd : {64, 128, 256}) {
    for (int32_t group : {1, 2, 3, 4, 5, 8}) {
      cases.push_back(Decodes(hd, 2 * group, 2, 16, 0, mixed));
    }
  }
  // Block sizes: whole tiles of 32, and blocks that split tiles (8, 24, 1) or are odd (5).
  for (int32_t bs : {32, 8, 24, 5, 1}) {
    cases.push_back(Decodes(128, 8, 2, bs, 0, {3, 129, 700, 33}));
    cases.push_back(Decodes(64, 8, 1, bs, 0, {2, 250, 31}));
  }
  // Sliding windows shorter and longer than a split, unaligned with the tiles.
  cases.push_back(Decodes(128, 32, 8, 16, 100, {3000, 50, 1500, 101}));
  cases.push_back(Decodes(64, 16, 2, 32, 1000, {3001, 999, 1000}));
  // Long contexts (8k-32k), Llama-3.1-8B's head shape.
  cases.push_back(Decodes(128, 8, 2, 16, 0, {8191, 32768, 77}));
  cases.push_back(Decodes(64, 16, 2, 32, 0, {16385, 9000}));
  return cases;
}

class DecodeAttentionParityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gpu_ = gpu_testing::MakeGpuBackend();
    ASSERT_NE(gpu_, nullptr);
    cuda_ = dynamic_cast<CudaBackend*>(gpu_.get());
    ASSERT_NE(cuda_, nullptr);
    cpu_ = std::make_unique<CpuBackend>(CpuBackendConfig{0});
  }
  void TearDown() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::printf("[ kernel %s ] worst rel err %.3e over %d launches\n", info->name(), worst_, checks_);
  }

  // Int32 values on the device (returned buffer owns them).
  std::unique_ptr<DeviceBuffer> UploadI32(const std::vector<int32_t>& values) {
    auto buf = gpu_->Allocate(std::max<size_t>(4, values.size() * 4));
    EXPECT_TRUE(buf.ok());
    if (!buf.ok()) return nullptr;
    const Tensor t((*buf)->data(), DType::kI32, {static_cast<int64_t>(values.size())});
    if (!values.empty()) {
      EXPECT_TRUE(gpu_->CopyToDevice(values.data(), t).ok());
    }
    return std::move(*buf);
  }

  void Check(const DecodeCase& c, std::vector<int32_t> split_counts = {1, 2, 3, 8, 64}) {
    const gpu_testing::AttentionBatch b = gpu_testing::MakeAttentionBatch(c, 4, rng_);
    const int64_t n = b.meta.num_seqs, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
    const int64_t cache_elems = static_cast<int64_t>(b.num_blocks) * nkv * c.block_size * hd;
    auto q = RandomBf16(n * nh * hd, rng_, 2.0f);
    auto kc = RandomBf16(cache_elems, rng_, 2.0f), vc = RandomBf16(cache_elems, rng_);
    const AttentionParams params{c.num_heads, c.num_kv_heads, c.head_dim,
                                 1.0f / std::sqrt(static_cast<float>(hd)), c.window};
    std::vector<float> ref(n * nh * hd);
    const KvLayerView cpu_cache{HostF32(kc, {b.num_blocks, nkv, c.block_size, hd}),
                                HostF32(vc, {b.num_blocks, nkv, c.block_size, hd})};
    ASSERT_TRUE(cpu_->Attention(HostF32(q, {n, nh * hd}), cpu_cache, params, b.meta, HostF32(ref, {n, nh * hd})).ok());
    auto dq = Upload(*gpu_, q, DType::kBF16, {n, nh * hd});
    auto dkc = Upload(*gpu_, kc, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
    auto dvc = Upload(*gpu_, vc, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
    auto tables = UploadI32(b.block_tables);
    auto positions = UploadI32(b.positions);
    ASSERT_TRUE(tables && positions);
    int sms = 0;
    ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, cuda_->device()), cudaSuccess);
    const int32_t max_ctx = b.meta.max_context_len;
    const int32_t policy = kernels::PagedDecodeAttentionSplits(static_cast<int32_t>(n), c.num_kv_heads, max_ctx, sms);
    split_counts.push_back(policy);
    std::vector<PagedDecodeKernel> kinds{PagedDecodeKernel::kAuto, PagedDecodeKernel::kCudaCore};
    if (hd != 256) kinds.push_back(PagedDecodeKernel::kTensorCore);
    for (PagedDecodeKernel kind : kinds) {
      for (int32_t splits : split_counts) {
        const std::string what = Describe(c) + " kernel " + std::to_string(static_cast<int>(kind)) + " splits " +
                                 std::to_string(splits);
        auto dout = Poisoned(*gpu_, DType::kBF16, {n, nh * hd});
        const int64_t floats = static_cast<int64_t>(
            kernels::PagedDecodeAttentionPartialFloats(static_cast<int32_t>(n), c.num_heads, c.head_dim, splits));
        auto partial = Poisoned(*gpu_, DType::kF32, {std::max<int64_t>(1, floats)});
        kernels::PagedDecodeAttentionParams p;
        p.q = static_cast<const __nv_bfloat16*>(dq.t.data);
        p.k_cache = static_cast<const __nv_bfloat16*>(dkc.t.data);
        p.v_cache = static_cast<const __nv_bfloat16*>(dvc.t.data);
        p.out = static_cast<__nv_bfloat16*>(dout.t.data);
        p.block_tables = static_cast<const int32_t*>(tables->data());
        p.positions = static_cast<const int32_t*>(positions->data());
        p.partial = static_cast<float*>(partial.t.data);
        p.num_seqs = static_cast<int32_t>(n);
        p.num_splits = splits;
        p.max_blocks_per_seq = b.meta.max_blocks_per_seq;
        p.num_heads = c.num_heads;
        p.num_kv_heads = c.num_kv_heads;
        p.head_dim = c.head_dim;
        p.block_size = c.block_size;
        p.sliding_window = c.window;
        p.scale = params.scale;
        p.kernel = kind;
        ASSERT_EQ(kernels::LaunchPagedDecodeAttention(p, cuda_->stream()), cudaSuccess) << what;
        ASSERT_TRUE(gpu_->Synchronize().ok()) << what;
        const double err = RelError(Download(*gpu_, dout.t), ref);
        worst_ = std::max(worst_, err);
        ++checks_;
        EXPECT_LE(err, kBf16Tolerance) << what;
      }
    }
  }

  std::unique_ptr<Backend> gpu_;
  CudaBackend* cuda_ = nullptr;
  std::unique_ptr<CpuBackend> cpu_;
  double worst_ = 0.0;
  int checks_ = 0;
  std::mt19937 rng_{4321};
};

TEST_F(DecodeAttentionParityTest, EveryKernelAndSplitCountMatchesTheReference) {
  for (const DecodeCase& c : Cases()) {
    Check(c);
    if (HasFatalFailure()) return;
  }
}

// Small enough for compute-sanitizer memcheck and racecheck: both tile paths (whole 16-key tiles
// and blocks of 5), a window, several splits.
TEST_F(DecodeAttentionParityTest, SmallBatchForSanitizers) {
  Check(Decodes(128, 8, 2, 16, 0, {1, 40, 200}), {1, 3});
  Check(Decodes(64, 4, 1, 5, 30, {7, 90}), {1, 2});
}

TEST_F(DecodeAttentionParityTest, TensorCoreKernelRejectsHeadDim256) {
  kernels::PagedDecodeAttentionParams p;
  p.num_seqs = 1;
  p.num_heads = 8;
  p.num_kv_heads = 2;
  p.head_dim = 256;
  p.block_size = 16;
  p.kernel = PagedDecodeKernel::kTensorCore;
  EXPECT_EQ(kernels::LaunchPagedDecodeAttention(p, cuda_->stream()), cudaErrorInvalidValue);
}

// The tensor-core policy fills every SM's CTA slots to >= 90% in each wave, within its caps.
TEST(DecodeAttentionSplitPolicy, FillsTheWavesWithinTheCaps) {
  EXPECT_TRUE(kernels::PagedDecodeAttentionTensorCores(64));
  EXPECT_TRUE(kernels::PagedDecodeAttentionTensorCores(128));
  EXPECT_FALSE(kernels::PagedDecodeAttentionTensorCores(256));
  for (int32_t sms : {1, 78, 114, 132}) {
    for (int32_t seqs : {1, 2, 7, 32, 64, 100, 128, 256, 1000}) {
      for (int32_t nkv : {1, 8}) {
        for (int32_t ctx : {1, 100, 1024, 32768}) {
          const int32_t s = kernels::PagedDecodeAttentionSplits(seqs, nkv, ctx, sms);
          const std::string what = std::to_string(seqs) + " seqs, " + std::to_string(nkv) + " kv heads, ctx " +
                                   std::to_string(ctx) + ", " + std::to_string(sms) + " SMs";
          ASSERT_GE(s, 1) << what;
          ASSERT_LE(s, 64) << what;
          ASSERT_LE(s, std::max(1, (ctx + 63) / 64)) << what;
          const int64_t ctas = static_cast<int64_t>(seqs) * nkv * s, slots = 2LL * sms;
          const int64_t waves = (ctas + slots - 1) / slots;
          const bool capped = s == std::min(64, std::max(1, (ctx + 63) / 64));
          if (!capped) {
            EXPECT_GE(10 * ctas, 9 * waves * slots) << what;
          }
          // The CUDA-core kernel keeps its own policy: enough CTAs to fill the SMs twice.
          const int64_t want = (2LL * sms + int64_t{seqs} * nkv - 1) / (int64_t{seqs} * nkv);
          EXPECT_EQ(kernels::PagedDecodeAttentionSplits(seqs, nkv, ctx, sms, PagedDecodeKernel::kCudaCore),
                    std::max<int64_t>(1, std::min<int64_t>(want, std::max(1, (ctx + 63) / 64))))
              << what;
        }
      }
    }
  }
}

}  // namespace
}  // namespace tandem
