// RoPE and the KV write fused into the split-KV decode attention kernel
// (Backend::RopeWriteKvAttention on the CUDA backend, PagedDecodeAttentionParams::qkv), against the
// CPU backend's RopeAndWriteKv then Attention on the same inputs: fresh random qkv and caches per
// case, the new tokens' cache slots and the output poisoned with NaN, ||out - ref|| / ||ref|| <=
// 1e-2 for the output and for the new keys and values the kernel wrote, every other cache element
// unchanged bit for bit. Head dims 64 / 128, GQA groups 1 / 4 / 8, block sizes with whole 16-key
// tiles and without, first positions (0, 1), split boundaries, windows, long contexts, batches of
// 1-4 (the small-batch path with its programmatic launch and in-kernel combine, on and off) and
// larger ones, splits of at least 64 / 128 / 256 keys; a padded row (negative slot) writes nothing; shapes the kernel cannot fuse take the
// two ops; a position past the RoPE table is an error; and the engine's order (programmatic small-M
// GEMV -> fused attention).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_backend_factory.h"
#include "gpu_test_support.h"
#include "kernels/paged_decode_attention.cuh"

namespace tandem {
namespace {

using gpu_testing::AttentionBatch;
using gpu_testing::AttentionCase;
using gpu_testing::Decodes;
using gpu_testing::Describe;
using gpu_testing::Download;
using gpu_testing::HostF32;
using gpu_testing::Poisoned;
using gpu_testing::RandomBf16;
using gpu_testing::RelError;
using gpu_testing::Upload;

constexpr double kBf16Tolerance = 1e-2;
constexpr int64_t kMaxPositions = 33000;  // the longest case: 32768 tokens

using gpu_testing::HostRope;

HostRope MakeRope(int32_t rotary_dim) { return gpu_testing::LlamaRope(kMaxPositions, rotary_dim); }

struct Options {
  bool small_batch_attention = false;  // programmatic launch + in-kernel combine (batches <= 4)
  bool fuse = true;
  int min_split_keys = 64;             // CudaBackendOptions::decode_attention_min_split_keys
};

class FusedRopeDecodeAttentionTest : public ::testing::Test {
 protected:
  void SetUp() override { cpu_ = std::make_unique<CpuBackend>(CpuBackendConfig{0}); }
  void TearDown() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::printf("[ fused rope %s ] worst rel err: output %.3e, new K/V %.3e over %d cases\n", info->name(),
                worst_out_, worst_kv_, checks_);
  }

  std::unique_ptr<Backend> Gpu(const Options& o) {
    CudaBackendOptions options = gpu_testing::GpuBackendOptions(0.9, o.small_batch_attention);
    options.fuse_rope_decode_attention = o.fuse;
    options.decode_attention_min_split_keys = o.min_split_keys;
    return gpu_testing::MakeGpuBackend(options);
  }

  // One case through `gpu`: whether it fused is up to the backend; `padded_row` (or -1) gets a
  // negative slot (nothing written; its output is not compared: its key lives nowhere).
  void Check(Backend& gpu, const AttentionCase& c, const HostRope& rope, int32_t padded_row = -1) {
    AttentionBatch b = gpu_testing::MakeAttentionBatch(c, 3, rng_);
    if (padded_row >= 0) b.slots[padded_row] = -1;
    const int64_t n = b.meta.num_seqs, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
    const int64_t row = (nh + 2 * nkv) * hd;
    const int64_t cache_elems = static_cast<int64_t>(b.num_blocks) * nkv * c.block_size * hd;
    const std::string what = Describe(c) + (padded_row >= 0 ? " padded row " + std::to_string(padded_row) : "");
    auto qkv = RandomBf16(n * row, rng_, 2.0f);
    auto kc = RandomBf16(cache_elems, rng_, 2.0f), vc = RandomBf16(cache_elems, rng_);
    // The new tokens' slots (where the table puts each position) start as NaN on both sides.
    std::vector<int64_t> new_elems;
    for (int64_t s = 0; s < n; ++s) {
      const int64_t pos = b.positions[s];
      const int64_t block = b.block_tables[s * b.meta.max_blocks_per_seq + pos / c.block_size];
      for (int64_t h = 0; h < nkv; ++h) {
        for (int64_t d = 0; d < hd; ++d) {
          const int64_t i = ((block * nkv + h) * c.block_size + pos % c.block_size) * hd + d;
          kc[i] = vc[i] = std::nanf("");
          if (s != padded_row) new_elems.push_back(i);
        }
      }
    }
    const AttentionParams params{c.num_heads, c.num_kv_heads, c.head_dim, 1.0f / std::sqrt(static_cast<float>(hd)),
                                 c.window};
    // Reference: the CPU backend's two ops.
    std::vector<float> cos = rope.cos, sin = rope.sin, qkv_cpu = qkv, kc_cpu = kc, vc_cpu = vc;
    std::vector<float> q_cpu(n * nh * hd), ref(n * nh * hd);
    const int64_t half = rope.rotary_dim / 2;
    const RopeTables cpu_rope{HostF32(cos, {kMaxPositions, half}), HostF32(sin, {kMaxPositions, half}),
                              rope.rotary_dim};
    const KvLayerView cpu_cache{HostF32(kc_cpu, {b.num_blocks, nkv, c.block_size, hd}),
                                HostF32(vc_cpu, {b.num_blocks, nkv, c.block_size, hd})};
    ASSERT_TRUE(cpu_->RopeWriteKvAttention(HostF32(qkv_cpu, {n, row}), HostF32(q_cpu, {n, nh * hd}), cpu_rope,
                                           params, b.meta, cpu_cache, HostF32(ref, {n, nh * hd}))
                    .ok())
        << what;

    auto dqkv = Upload(gpu, qkv, DType::kBF16, {n, row});
    auto dkc = Upload(gpu, kc, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
    auto dvc = Upload(gpu, vc, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
    auto dcos = Upload(gpu, rope.cos, DType::kF32, {kMaxPositions, half});
    auto dsin = Upload(gpu, rope.sin, DType::kF32, {kMaxPositions, half});
    auto dq = Poisoned(gpu, DType::kBF16, {n, nh * hd});
    auto dout = Poisoned(gpu, DType::kBF16, {n, nh * hd});
    const RopeTables gpu_rope{dcos.t, dsin.t, rope.rotary_dim};
    ASSERT_TRUE(gpu.RopeWriteKvAttention(dqkv.t, dq.t, gpu_rope, params, b.meta, {dkc.t, dvc.t}, dout.t).ok()) << what;
    ASSERT_TRUE(gpu.Synchronize().ok()) << what;

    std::vector<float> out = Download(gpu, dout.t);
    if (padded_row >= 0) {
      std::fill(out.begin() + padded_row * nh * hd, out.begin() + (padded_row + 1) * nh * hd, 0.0f);
      std::fill(ref.begin() + padded_row * nh * hd, ref.begin() + (padded_row + 1) * nh * hd, 0.0f);
    }
    const double err = RelError(out, ref);
    // The cache: the new K/V against the CPU's, every other element as uploaded (NaN included:
    // a padded row's slot stays poisoned).
    const std::vector<float> kc_gpu = Download(gpu, dkc.t), vc_gpu = Download(gpu, dvc.t);
    std::vector<float> new_gpu, new_ref;
    for (int64_t i : new_elems) {
      new_gpu.push_back(kc_gpu[i]);
      new_ref.push_back(kc_cpu[i]);
      new_gpu.push_back(vc_gpu[i]);
      new_ref.push_back(vc_cpu[i]);
    }
    const double kv_err = RelError(new_gpu, new_ref);
    std::vector<bool> is_new(cache_elems, false);
    for (int64_t i : new_elems) is_new[i] = true;
    int64_t changed = 0;
    for (int64_t i = 0; i < cache_elems; ++i) {
      if (is_new[i]) continue;
      const bool same_k = kc_gpu[i] == kc[i] || (std::isnan(kc_gpu[i]) && std::isnan(kc[i]));
      const bool same_v = vc_gpu[i] == vc[i] || (std::isnan(vc_gpu[i]) && std::isnan(vc[i]));
      changed += !same_k + !same_v;
    }
    worst_out_ = std::max(worst_out_, err);
    worst_kv_ = std::max(worst_kv_, kv_err);
    ++checks_;
    EXPECT_LE(err, kBf16Tolerance) << what;
    EXPECT_LE(kv_err, kBf16Tolerance) << what;
    EXPECT_EQ(changed, 0) << what << ": cache elements other than the new tokens' changed";
    q_written_ = !std::isnan(Download(gpu, dq.t)[0]);
  }

  std::unique_ptr<CpuBackend> cpu_;
  std::mt19937 rng_{20261126};
  double worst_out_ = 0.0, worst_kv_ = 0.0;
  int checks_ = 0;
  bool q_written_ = false;  // the last Check's q scratch: written only by the unfused RoPE kernel
};

TEST_F(FusedRopeDecodeAttentionTest, MatchesRopeThenAttentionOnTheCpu) {
  const HostRope rope128 = MakeRope(128), rope64 = MakeRope(64);
  // Lengths: the first decode positions, tile and split boundaries (64-key splits), odd lengths.
  const std::vector<int32_t> lens{1, 2, 17, 64, 65, 1023, 129, 4097};
  for (const Options o : {Options{false, true}, Options{true, true}, Options{true, true, 128}, Options{false, true, 256}}) {
    std::unique_ptr<Backend> gpu = Gpu(o);
    ASSERT_NE(gpu, nullptr);
    for (int32_t hd : {64, 128}) {
      const HostRope& rope = hd == 128 ? rope128 : rope64;
      for (int32_t group : {1, 4, 8}) {
        for (int32_t len : lens) Check(*gpu, Decodes(hd, 8 * group, 8, 16, 0, {len}), rope);
        for (size_t n = 2; n <= 4; ++n) {
          Check(*gpu, Decodes(hd, 2 * group, 2, 16, 0, std::vector<int32_t>(lens.end() - n, lens.end())), rope);
        }
        if (HasFatalFailure()) return;
      }
      // Blocks that split tiles, a window shorter than a split, bigger batches, a long context.
      Check(*gpu, Decodes(hd, 8, 2, 5, 0, {3, 129, 700, 33}), rope);
      Check(*gpu, Decodes(hd, 16, 2, 32, 100, {3000, 50, 101}), rope);
      Check(*gpu, Decodes(hd, 32, 8, 16, 0, {1, 300, 77, 1024, 5, 16, 17, 2048, 31}), rope);
      Check(*gpu, Decodes(hd, 8, 1, 16, 0, std::vector<int32_t>(40, 257)), rope);
      Check(*gpu, Decodes(hd, 8, 2, 16, 0, {32768}), rope);
      if (HasFatalFailure()) return;
    }
  }
  EXPECT_FALSE(q_written_) << "the fused path wrote the q scratch: it ran the RoPE kernel";
}

TEST_F(FusedRopeDecodeAttentionTest, APaddedRowWritesNothing) {
  const HostRope rope = MakeRope(128);
  std::unique_ptr<Backend> gpu = Gpu({});
  ASSERT_NE(gpu, nullptr);
  Check(*gpu, Decodes(128, 32, 8, 16, 0, {100, 7, 1000}), rope, /*padded_row=*/1);
  Check(*gpu, Decodes(128, 8, 2, 16, 0, {5, 64}), rope, /*padded_row=*/0);
}

// Shapes the kernel cannot fuse (half the head rotated; head dim 256) and the switch off take the
// RoPE kernel and attention, with the same results.
TEST_F(FusedRopeDecodeAttentionTest, WhatItCannotFuseTakesTheTwoOps) {
  std::unique_ptr<Backend> gpu = Gpu({});
  ASSERT_NE(gpu, nullptr);
  EXPECT_FALSE(kernels::PagedDecodeAttentionFusesRope(128, 64));
  EXPECT_FALSE(kernels::PagedDecodeAttentionFusesRope(256, 256));
  EXPECT_TRUE(kernels::PagedDecodeAttentionFusesRope(64, 64));
  Check(*gpu, Decodes(128, 8, 2, 16, 0, {300, 2}), MakeRope(64));
  EXPECT_TRUE(q_written_);
  Check(*gpu, Decodes(256, 8, 2, 16, 0, {300, 2}), MakeRope(256));
  EXPECT_TRUE(q_written_);
  std::unique_ptr<Backend> unfused = Gpu({false, false});
  ASSERT_NE(unfused, nullptr);
  Check(*unfused, Decodes(128, 32, 8, 16, 0, {1023}), MakeRope(128));
  EXPECT_TRUE(q_written_);
}

// A position past the RoPE table is an OutOfRange error on either path (fused or not), before
// anything is launched: the cache stays as it was.
TEST_F(FusedRopeDecodeAttentionTest, APositionPastTheRopeTableIsOutOfRange) {
  for (bool fuse : {true, false}) {
    std::unique_ptr<Backend> gpu = Gpu({false, fuse});
    ASSERT_NE(gpu, nullptr);
    const AttentionCase c = Decodes(128, 8, 2, 16, 0, {300});
    const AttentionBatch b = gpu_testing::MakeAttentionBatch(c, 1, rng_);
    const int64_t hd = 128, row = (8 + 2 * 2) * hd, positions = 100;  // the query sits at 299
    const HostRope rope = gpu_testing::LlamaRope(positions, 128);
    const auto kc = RandomBf16(static_cast<int64_t>(b.num_blocks) * 2 * 16 * hd, rng_);
    auto dqkv = Upload(*gpu, RandomBf16(row, rng_), DType::kBF16, {1, row});
    auto dkc = Upload(*gpu, kc, DType::kBF16, {b.num_blocks, 2, 16, hd});
    auto dvc = Upload(*gpu, kc, DType::kBF16, {b.num_blocks, 2, 16, hd});
    auto dcos = Upload(*gpu, rope.cos, DType::kF32, {positions, hd / 2});
    auto dsin = Upload(*gpu, rope.sin, DType::kF32, {positions, hd / 2});
    auto dq = Poisoned(*gpu, DType::kBF16, {1, 8 * hd});
    auto dout = Poisoned(*gpu, DType::kBF16, {1, 8 * hd});
    const AttentionParams params{8, 2, 128, 1.0f / std::sqrt(128.0f), 0};
    const Status s = gpu->RopeWriteKvAttention(dqkv.t, dq.t, RopeTables{dcos.t, dsin.t, 128}, params, b.meta,
                                               {dkc.t, dvc.t}, dout.t);
    EXPECT_EQ(s.code(), StatusCode::kOutOfRange) << (fuse ? "fused: " : "unfused: ") << s.ToString();
    ASSERT_TRUE(gpu->Synchronize().ok());
    EXPECT_EQ(RelError(Download(*gpu, dkc.t), kc), 0.0) << (fuse ? "fused" : "unfused") << ": the cache was written";
  }
}

// The launcher refuses a fused launch it cannot do instead of computing something else.
TEST_F(FusedRopeDecodeAttentionTest, TheLauncherRefusesIncompleteFusedLaunches) {
  std::unique_ptr<Backend> gpu = Gpu({});
  ASSERT_NE(gpu, nullptr);
  auto* cuda = dynamic_cast<CudaBackend*>(gpu.get());
  ASSERT_NE(cuda, nullptr);
  kernels::PagedDecodeAttentionParams p;
  p.num_seqs = 1;
  p.num_heads = 8;
  p.num_kv_heads = 2;
  p.head_dim = 128;
  p.block_size = 16;
  p.rotary_dim = 128;
  p.qkv = reinterpret_cast<const __nv_bfloat16*>(16);  // never read: refused before any launch
  EXPECT_EQ(kernels::LaunchPagedDecodeAttention(p, cuda->stream()), cudaErrorInvalidValue);  // no tables
  p.rope_cos = p.rope_sin = reinterpret_cast<const float*>(16);
  p.slot_mapping = reinterpret_cast<const int64_t*>(16);
  p.k_cache_out = p.v_cache_out = reinterpret_cast<__nv_bfloat16*>(16);
  p.rotary_dim = 64;
  EXPECT_EQ(kernels::LaunchPagedDecodeAttention(p, cuda->stream()), cudaErrorInvalidValue);  // half rotated
  p.rotary_dim = 128;
  p.kernel = kernels::PagedDecodeKernel::kCudaCore;
  EXPECT_EQ(kernels::LaunchPagedDecodeAttention(p, cuda->stream()), cudaErrorInvalidValue);  // no CUDA-core path
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

// Small enough for compute-sanitizer memcheck and racecheck: the small-batch path (programmatic,
// in-kernel combine) and a larger batch, whole tiles and blocks of 5.
TEST_F(FusedRopeDecodeAttentionTest, SmallForSanitizers) {
  const HostRope rope = MakeRope(128);
  std::unique_ptr<Backend> gpu = Gpu({true, true});
  ASSERT_NE(gpu, nullptr);
  Check(*gpu, Decodes(128, 8, 2, 16, 0, {1, 65, 200}), rope);
  Check(*gpu, Decodes(128, 8, 2, 5, 0, {7, 90, 3, 33, 64, 2}), rope);
}

// As the engine runs batch 1-4: the programmatic small-M GEMV writes qkv and the fused attention
// launches as its programmatic dependent (small-batch switches on), so it may start while the GEMV
// still streams its weights. qkv starts as NaN: reading it before the wait shows.
TEST_F(FusedRopeDecodeAttentionTest, AfterTheProgrammaticGemv) {
  std::unique_ptr<Backend> gpu = Gpu({true, true});
  ASSERT_NE(gpu, nullptr);
  constexpr int64_t kHidden = 4096;
  const int64_t hd = 128, nh = 32, nkv = 8, row = (nh + 2 * nkv) * hd;
  const HostRope rope = MakeRope(128);
  auto w = RandomBf16(static_cast<size_t>(row * kHidden), rng_, 0.03f);
  auto dw = Upload(*gpu, w, DType::kBF16, {row, kHidden});
  auto dcos = Upload(*gpu, rope.cos, DType::kF32, {kMaxPositions, hd / 2});
  auto dsin = Upload(*gpu, rope.sin, DType::kF32, {kMaxPositions, hd / 2});
  const RopeTables gpu_rope{dcos.t, dsin.t, 128};
  const std::vector<int32_t> lens{1500, 37, 800, 3000};
  for (int32_t n = 1; n <= 4; ++n) {
    const AttentionCase c = Decodes(128, 32, 8, 16, 0, std::vector<int32_t>(lens.begin(), lens.begin() + n));
    const AttentionBatch b = gpu_testing::MakeAttentionBatch(c, 4, rng_);
    const int64_t cache_elems = static_cast<int64_t>(b.num_blocks) * nkv * c.block_size * hd;
    auto x = RandomBf16(n * kHidden, rng_);
    auto kc = RandomBf16(cache_elems, rng_, 2.0f), vc = RandomBf16(cache_elems, rng_);
    const AttentionParams params{32, 8, 128, 1.0f / std::sqrt(128.0f), 0};
    auto dx = Upload(*gpu, x, DType::kBF16, {n, kHidden});
    auto dkc = Upload(*gpu, kc, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
    auto dvc = Upload(*gpu, vc, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
    // Twice: the first run uploads the attention metadata between the GEMV and attention; the
    // second reuses it, so the two are back to back.
    for (int run = 0; run < 2; ++run) {
      auto dqkv = Poisoned(*gpu, DType::kBF16, {n, row});
      auto dq = Poisoned(*gpu, DType::kBF16, {n, nh * hd});
      auto dout = Poisoned(*gpu, DType::kBF16, {n, nh * hd});
      ASSERT_TRUE(gpu->Linear(dx.t, dw.t, Tensor(), dqkv.t).ok());
      ASSERT_TRUE(gpu->RopeWriteKvAttention(dqkv.t, dq.t, gpu_rope, params, b.meta, {dkc.t, dvc.t}, dout.t).ok());
      ASSERT_TRUE(gpu->Synchronize().ok());
      // The reference from the qkv the GPU computed, on the cache as uploaded.
      std::vector<float> qkv = Download(*gpu, dqkv.t), cos = rope.cos, sin = rope.sin, kc_cpu = kc, vc_cpu = vc;
      std::vector<float> q_cpu(n * nh * hd), ref(n * nh * hd);
      const RopeTables cpu_rope{HostF32(cos, {kMaxPositions, hd / 2}), HostF32(sin, {kMaxPositions, hd / 2}), 128};
      const KvLayerView cpu_cache{HostF32(kc_cpu, {b.num_blocks, nkv, c.block_size, hd}),
                                  HostF32(vc_cpu, {b.num_blocks, nkv, c.block_size, hd})};
      ASSERT_TRUE(cpu_->RopeWriteKvAttention(HostF32(qkv, {n, row}), HostF32(q_cpu, {n, nh * hd}), cpu_rope, params,
                                             b.meta, cpu_cache, HostF32(ref, {n, nh * hd}))
                      .ok());
      const double err = RelError(Download(*gpu, dout.t), ref);
      worst_out_ = std::max(worst_out_, err);
      ++checks_;
      EXPECT_LE(err, kBf16Tolerance) << Describe(c) << " run " << run;
    }
  }
}

}  // namespace
}  // namespace tandem
