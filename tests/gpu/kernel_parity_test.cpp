// Every CUDA backend op against the CPU reference backend's op on fresh random inputs (bf16-exact,
// so both see the same values), outputs poisoned with NaN before each run; relative error
// ||out - ref|| / ||ref|| <= 1e-2 on the bf16 paths.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cmath>
#include <numeric>
#include <string>

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

class KernelParityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gpu_ = gpu_testing::MakeGpuBackend();
    ASSERT_NE(gpu_, nullptr);
    cpu_ = std::make_unique<CpuBackend>(CpuBackendConfig{0});
  }
  void TearDown() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::printf("[ kernel %s ] worst rel err %.3e over %d bf16 comparisons\n", info->name(), worst_, checks_);
  }
  // Records a bf16-path relative error for the summary line.
  double Track(double err) {
    worst_ = std::max(worst_, err);
    ++checks_;
    return err;
  }
  std::unique_ptr<Backend> gpu_;
  std::unique_ptr<CpuBackend> cpu_;
  double worst_ = 0.0;
  int checks_ = 0;
  std::mt19937 rng_{1234};
};

TEST_F(KernelParityTest, Embedding) {
  for (int64_t hidden : {64, 100, 4096}) {
    for (int32_t n : {1, 7, 300}) {
      const int64_t vocab = 1000;
      auto table = RandomBf16(vocab * hidden, rng_);
      std::vector<int32_t> ids(n);
      std::uniform_int_distribution<int32_t> id(0, vocab - 1);
      for (auto& x : ids) x = id(rng_);
      std::vector<float> ref(n * hidden);
      ASSERT_TRUE(cpu_->Embedding(ids, HostF32(table, {vocab, hidden}), HostF32(ref, {n, hidden})).ok());
      auto d_table = Upload(*gpu_, table, DType::kBF16, {vocab, hidden});
      auto d_out = Poisoned(*gpu_, DType::kBF16, {n, hidden});
      ASSERT_TRUE(gpu_->Embedding(ids, d_table.t, d_out.t).ok());
      EXPECT_EQ(RelError(Download(*gpu_, d_out.t), ref), 0.0) << "hidden " << hidden << " n " << n;
    }
  }
}

TEST_F(KernelParityTest, RmsNormWithAndWithoutResidual) {
  for (int64_t hidden : {64, 255, 4096, 8192}) {
    for (int64_t rows : {1, 5, 257}) {
      for (bool with_residual : {false, true}) {
        auto x = RandomBf16(rows * hidden, rng_, 2.0f);
        auto res = RandomBf16(rows * hidden, rng_, 2.0f);
        auto w = RandomBf16(hidden, rng_, 1.5f);
        std::vector<float> ref(rows * hidden), ref_res = res;
        ASSERT_TRUE(cpu_->RmsNorm(HostF32(x, {rows, hidden}),
                                  with_residual ? HostF32(ref_res, {rows, hidden}) : Tensor(),
                                  HostF32(w, {hidden}), 1e-5f, HostF32(ref, {rows, hidden}))
                        .ok());
        auto dx = Upload(*gpu_, x, DType::kBF16, {rows, hidden});
        auto dres = Upload(*gpu_, res, DType::kBF16, {rows, hidden});
        auto dw = Upload(*gpu_, w, DType::kBF16, {hidden});
        auto dout = Poisoned(*gpu_, DType::kBF16, {rows, hidden});
        ASSERT_TRUE(gpu_->RmsNorm(dx.t, with_residual ? dres.t : Tensor(), dw.t, 1e-5f, dout.t).ok());
        const std::string what = "hidden " + std::to_string(hidden) + " rows " + std::to_string(rows) +
                                 (with_residual ? " +residual" : "");
        EXPECT_LE(Track(RelError(Download(*gpu_, dout.t), ref)), kBf16Tolerance) << what;
        if (with_residual) {
          EXPECT_LE(Track(RelError(Download(*gpu_, dres.t), ref_res)), kBf16Tolerance) << what;
        }
      }
    }
  }
}

TEST_F(KernelParityTest, LinearBf16AndF32OutputsWithAndWithoutBias) {
  struct Shape { int64_t t, k, n; };
  // Rows <= 4 with k % 8 == 0 take the small-M GEMV kernel (k below, at and past its 2048-element
  // unrolled step; odd n); the rest cuBLAS (1 x 60: k % 8 != 0).
  for (Shape s : {Shape{1, 64, 96}, Shape{7, 256, 512}, Shape{33, 4096, 1024}, Shape{128, 200, 77},
                  Shape{300, 1024, 4096}, Shape{1, 4096, 1027}, Shape{2, 2056, 300}, Shape{3, 14336, 129},
                  Shape{4, 8, 5}, Shape{1, 60, 33}, Shape{4, 200, 2048}}) {
    for (DType out_dtype : {DType::kBF16, DType::kF32}) {
      for (bool with_bias : {false, true}) {
        auto x = RandomBf16(s.t * s.k, rng_);
        auto w = RandomBf16(s.n * s.k, rng_, 0.1f);
        auto b = RandomBf16(s.n, rng_);
        // CPU weights: bf16 bits, as a checkpoint would hold them.
        std::vector<uint16_t> w_bits(w.size()), b_bits(b.size());
        for (size_t i = 0; i < w.size(); ++i) w_bits[i] = static_cast<uint16_t>(std::bit_cast<uint32_t>(w[i]) >> 16);
        for (size_t i = 0; i < b.size(); ++i) b_bits[i] = static_cast<uint16_t>(std::bit_cast<uint32_t>(b[i]) >> 16);
        std::vector<float> ref(s.t * s.n);
        ASSERT_TRUE(cpu_->Linear(HostF32(x, {s.t, s.k}), Tensor(w_bits.data(), DType::kBF16, {s.n, s.k}),
                                 with_bias ? Tensor(b_bits.data(), DType::kBF16, {s.n}) : Tensor(),
                                 HostF32(ref, {s.t, s.n}))
                        .ok());
        auto dx = Upload(*gpu_, x, DType::kBF16, {s.t, s.k});
        auto dw = Upload(*gpu_, w, DType::kBF16, {s.n, s.k});
        auto db = Upload(*gpu_, b, DType::kBF16, {s.n});
        auto dout = Poisoned(*gpu_, out_dtype, {s.t, s.n});
        ASSERT_TRUE(gpu_->Linear(dx.t, dw.t, with_bias ? db.t : Tensor(), dout.t).ok());
        EXPECT_LE(Track(RelError(Download(*gpu_, dout.t), ref)), kBf16Tolerance)
            << s.t << "x" << s.k << "x" << s.n << (out_dtype == DType::kF32 ? " f32" : " bf16")
            << (with_bias ? " +bias" : "");
      }
    }
  }
}

TEST_F(KernelParityTest, SiluMul) {
  for (auto [rows, inter] : {std::pair<int64_t, int64_t>{1, 1}, {3, 1001}, {1, 14336}, {64, 1 << 14}}) {
    auto gu = RandomBf16(rows * 2 * inter, rng_, 6.0f);
    std::vector<float> ref(rows * inter);
    ASSERT_TRUE(cpu_->SiluMul(HostF32(gu, {rows, 2 * inter}), HostF32(ref, {rows, inter})).ok());
    auto dgu = Upload(*gpu_, gu, DType::kBF16, {rows, 2 * inter});
    auto dout = Poisoned(*gpu_, DType::kBF16, {rows, inter});
    ASSERT_TRUE(gpu_->SiluMul(dgu.t, dout.t).ok());
    EXPECT_LE(Track(RelError(Download(*gpu_, dout.t), ref)), kBf16Tolerance) << rows << "x" << inter;
  }
}

TEST_F(KernelParityTest, GatherRows) {
  for (int64_t hidden : {64, 3, 4096}) {
    const int64_t rows = 50;
    auto x = RandomBf16(rows * hidden, rng_);
    std::vector<int32_t> pick{49, 0, 7, 7, 13};
    std::vector<float> ref(pick.size() * hidden);
    const int64_t r = static_cast<int64_t>(pick.size());
    ASSERT_TRUE(cpu_->GatherRows(HostF32(x, {rows, hidden}), pick, HostF32(ref, {r, hidden})).ok());
    auto dx = Upload(*gpu_, x, DType::kBF16, {rows, hidden});
    auto dout = Poisoned(*gpu_, DType::kBF16, {r, hidden});
    ASSERT_TRUE(gpu_->GatherRows(dx.t, pick, dout.t).ok());
    EXPECT_EQ(RelError(Download(*gpu_, dout.t), ref), 0.0) << hidden;
    // Same rows again (the upload is reused), different source.
    auto x2 = RandomBf16(rows * hidden, rng_);
    ASSERT_TRUE(cpu_->GatherRows(HostF32(x2, {rows, hidden}), pick, HostF32(ref, {r, hidden})).ok());
    auto dx2 = Upload(*gpu_, x2, DType::kBF16, {rows, hidden});
    ASSERT_TRUE(gpu_->GatherRows(dx2.t, pick, dout.t).ok());
    EXPECT_EQ(RelError(Download(*gpu_, dout.t), ref), 0.0) << hidden;
  }
}

// ---- attention: a batch of sequences, each (cached tokens, new tokens) -----------------------------

using SeqSpec = gpu_testing::SeqChunk;
using AttnCase = gpu_testing::AttentionCase;
using Batch = gpu_testing::AttentionBatch;
using gpu_testing::Describe;

Batch MakeBatch(const AttnCase& c, std::mt19937& rng) { return gpu_testing::MakeAttentionBatch(c, 3, rng); }

std::vector<AttnCase> AttentionCases() {
  std::vector<AttnCase> cases;
  const std::vector<SeqSpec> mixed{{0, 1}, {0, 37}, {45, 1}, {100, 19}, {16, 16}, {511, 1}};
  for (int32_t hd : {32, 64, 80, 96, 128, 256}) {
    for (int32_t group : {1, 4, 8}) {
      for (int32_t bs : {16, 32}) {
        cases.push_back({hd, 4 * group, 4, bs, 0, mixed});
      }
    }
  }
  // Sliding window, GQA 8 and 1.
  cases.push_back({128, 32, 4, 16, 37, mixed});
  cases.push_back({64, 8, 8, 32, 100, mixed});
  // More query heads per KV head than one CTA takes (group 40).
  cases.push_back({64, 40, 1, 16, 0, {{0, 9}, {30, 1}}});
  // Long context: a 4k decode and a prefill chunk deep into a 4k context.
  cases.push_back({128, 32, 8, 16, 0, {{4095, 1}, {3800, 296}, {0, 200}}});
  cases.push_back({64, 16, 16, 32, 0, {{4000, 1}, {2, 1}}});
  // Decode-only batch of many short sequences, odd lengths.
  std::vector<SeqSpec> decodes;
  for (int i = 0; i < 40; ++i) decodes.push_back({1 + 13 * i, 1});
  cases.push_back({128, 8, 2, 16, 0, decodes});
  // Decode-only batches take the split-KV decode kernel: one long sequence (many splits, partial
  // results combined), a few sequences of uneven lengths (some splits empty), every group size it
  // compiles (1, 2, 4, 8, and 3 / 5 padded up), windows shorter and longer than a split.
  const std::vector<SeqSpec> one_long{{3000, 1}};
  const std::vector<SeqSpec> uneven{{0, 1}, {700, 1}, {63, 1}, {1500, 1}, {64, 1}};
  for (int32_t hd : {64, 128, 256}) {
    for (int32_t group : {1, 2, 3, 4, 5, 8}) {
      cases.push_back({hd, 2 * group, 2, 16, 0, one_long});
      cases.push_back({hd, 2 * group, 2, 32, 0, uneven});
    }
  }
  cases.push_back({128, 32, 8, 16, 100, uneven});
  cases.push_back({64, 8, 2, 16, 1000, one_long});
  // Enough sequences that the split policy takes one split per sequence (64 x 4 KV heads on an
  // H100's 132 SMs), odd lengths. (Longer contexts: decode_attention_parity_test.cpp.)
  std::vector<SeqSpec> many;
  for (int i = 0; i < 64; ++i) many.push_back({5 + 29 * i, 1});
  cases.push_back({128, 16, 4, 16, 0, many});
  return cases;
}

TEST_F(KernelParityTest, RopeAndWriteKvIntoThePagedCache) {
  for (const AttnCase& c : AttentionCases()) {
    if (c.head_dim > 128 || c.seqs.size() > 10) continue;  // a representative subset
    const Batch b = MakeBatch(c, rng_);
    const int64_t t = b.meta.num_tokens, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
    const int64_t max_pos = 4096, half = hd / 2;
    std::vector<float> cos(max_pos * half), sin(max_pos * half);
    for (int64_t p = 0; p < max_pos; ++p) {
      for (int64_t i = 0; i < half; ++i) {
        const double freq = std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
        cos[p * half + i] = static_cast<float>(std::cos(p * freq));
        sin[p * half + i] = static_cast<float>(std::sin(p * freq));
      }
    }
    auto q = RandomBf16(t * nh * hd, rng_), k = RandomBf16(t * nkv * hd, rng_), v = RandomBf16(t * nkv * hd, rng_);
    const int64_t cache_elems = static_cast<int64_t>(b.num_blocks) * nkv * c.block_size * hd;
    std::vector<float> kc(cache_elems, 0.0f), vc(cache_elems, 0.0f), rq(t * nh * hd);
    // The fused projection: per token q | k | v.
    std::vector<float> qkv;
    for (int64_t i = 0; i < t; ++i) {
      qkv.insert(qkv.end(), q.begin() + i * nh * hd, q.begin() + (i + 1) * nh * hd);
      qkv.insert(qkv.end(), k.begin() + i * nkv * hd, k.begin() + (i + 1) * nkv * hd);
      qkv.insert(qkv.end(), v.begin() + i * nkv * hd, v.begin() + (i + 1) * nkv * hd);
    }
    const int64_t row = (nh + 2 * nkv) * hd;
    AttentionParams params{c.num_heads, c.num_kv_heads, c.head_dim, 1.0f / std::sqrt(static_cast<float>(hd)), c.window};
    RopeTables cpu_rope{HostF32(cos, {max_pos, half}), HostF32(sin, {max_pos, half}), c.head_dim};
    KvLayerView cpu_cache{HostF32(kc, {b.num_blocks, nkv, c.block_size, hd}),
                          HostF32(vc, {b.num_blocks, nkv, c.block_size, hd})};
    ASSERT_TRUE(cpu_->RopeAndWriteKv(HostF32(qkv, {t, row}), HostF32(rq, {t, nh * hd}), cpu_rope, params,
                                     b.meta, cpu_cache)
                    .ok());
    auto dqkv = Upload(*gpu_, qkv, DType::kBF16, {t, row});
    auto dq = Poisoned(*gpu_, DType::kBF16, {t, nh * hd});
    auto dcos = Upload(*gpu_, cos, DType::kF32, {max_pos, half});
    auto dsin = Upload(*gpu_, sin, DType::kF32, {max_pos, half});
    auto dkc = Poisoned(*gpu_, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
    auto dvc = Poisoned(*gpu_, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
    RopeTables gpu_rope{dcos.t, dsin.t, c.head_dim};
    ASSERT_TRUE(gpu_->RopeAndWriteKv(dqkv.t, dq.t, gpu_rope, params, b.meta, {dkc.t, dvc.t}).ok());
    const std::string what = Describe(c);
    EXPECT_LE(Track(RelError(Download(*gpu_, dq.t), rq)), kBf16Tolerance) << what;
    EXPECT_EQ(RelError(Download(*gpu_, dqkv.t), qkv), 0.0) << what << ": qkv was modified";
    // Written slots match; every other slot still holds the poison.
    auto gk = Download(*gpu_, dkc.t), gv = Download(*gpu_, dvc.t);
    std::vector<float> wk, wv, rk_slots, rv_slots;
    std::vector<bool> written(static_cast<size_t>(b.num_blocks) * c.block_size, false);
    for (int64_t slot : b.slots) written[slot] = true;
    int64_t stray = 0;
    for (int64_t blk = 0; blk < b.num_blocks; ++blk) {
      for (int64_t h = 0; h < nkv; ++h) {
        for (int64_t o = 0; o < c.block_size; ++o) {
          for (int64_t d = 0; d < hd; ++d) {
            const int64_t i = ((blk * nkv + h) * c.block_size + o) * hd + d;
            if (written[blk * c.block_size + o]) {
              wk.push_back(gk[i]); wv.push_back(gv[i]); rk_slots.push_back(kc[i]); rv_slots.push_back(vc[i]);
            } else if (!std::isnan(gk[i]) || !std::isnan(gv[i])) {
              ++stray;
            }
          }
        }
      }
    }
    EXPECT_LE(Track(RelError(wk, rk_slots)), kBf16Tolerance) << what;
    EXPECT_EQ(RelError(wv, rv_slots), 0.0) << what;
    EXPECT_EQ(stray, 0) << what;
  }
}

TEST_F(KernelParityTest, PagedAttentionMixedBatches) {
  int checked = 0;
  for (const AttnCase& c : AttentionCases()) {
    const Batch b = MakeBatch(c, rng_);
    const int64_t t = b.meta.num_tokens, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
    const int64_t cache_elems = static_cast<int64_t>(b.num_blocks) * nkv * c.block_size * hd;
    auto q = RandomBf16(t * nh * hd, rng_, 2.0f);
    auto kc = RandomBf16(cache_elems, rng_, 2.0f), vc = RandomBf16(cache_elems, rng_);
    AttentionParams params{c.num_heads, c.num_kv_heads, c.head_dim, 1.0f / std::sqrt(static_cast<float>(hd)), c.window};
    std::vector<float> ref(t * nh * hd);
    KvLayerView cpu_cache{HostF32(kc, {b.num_blocks, nkv, c.block_size, hd}),
                          HostF32(vc, {b.num_blocks, nkv, c.block_size, hd})};
    ASSERT_TRUE(cpu_->Attention(HostF32(q, {t, nh * hd}), cpu_cache, params, b.meta, HostF32(ref, {t, nh * hd})).ok());
    auto dq = Upload(*gpu_, q, DType::kBF16, {t, nh * hd});
    auto dkc = Upload(*gpu_, kc, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
    auto dvc = Upload(*gpu_, vc, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
    auto dout = Poisoned(*gpu_, DType::kBF16, {t, nh * hd});
    Status s = gpu_->Attention(dq.t, {dkc.t, dvc.t}, params, b.meta, dout.t);
    ASSERT_TRUE(s.ok()) << s.ToString() << " " << Describe(c);
    const double err = Track(RelError(Download(*gpu_, dout.t), ref));
    EXPECT_LE(err, kBf16Tolerance) << Describe(c);
    ++checked;
  }
  EXPECT_GE(checked, 40);
}

TEST_F(KernelParityTest, UnsupportedHeadDimIsAClearError) {
  AttnCase c{48, 4, 4, 16, 0, {{0, 3}}};
  const Batch b = MakeBatch(c, rng_);
  auto dq = Poisoned(*gpu_, DType::kBF16, {3, 4 * 48});
  auto dkc = Poisoned(*gpu_, DType::kBF16, {b.num_blocks, 4, 16, 48});
  auto dvc = Poisoned(*gpu_, DType::kBF16, {b.num_blocks, 4, 16, 48});
  auto dout = Poisoned(*gpu_, DType::kBF16, {3, 4 * 48});
  AttentionParams params{4, 4, 48, 0.1f, 0};
  Status s = gpu_->Attention(dq.t, {dkc.t, dvc.t}, params, b.meta, dout.t);
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented) << s.ToString();
}

TEST_F(KernelParityTest, MetadataOutsideTheCacheIsAnError) {
  AttnCase c{64, 4, 4, 16, 0, {{0, 3}}};
  Batch b = MakeBatch(c, rng_);
  b.block_tables[0] = b.num_blocks + 5;  // a block id past the cache
  auto dq = Poisoned(*gpu_, DType::kBF16, {3, 4 * 64});
  auto dkc = Poisoned(*gpu_, DType::kBF16, {b.num_blocks, 4, 16, 64});
  auto dvc = Poisoned(*gpu_, DType::kBF16, {b.num_blocks, 4, 16, 64});
  auto dout = Poisoned(*gpu_, DType::kBF16, {3, 4 * 64});
  AttentionParams params{4, 4, 64, 0.125f, 0};
  Status s = gpu_->Attention(dq.t, {dkc.t, dvc.t}, params, b.meta, dout.t);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange) << s.ToString();
}

// The metadata upload is keyed by content: the same host vectors refilled with another batch
// (what the engine does every step) must not reuse the previous step's device copy.
TEST_F(KernelParityTest, ReusedMetadataVectorsWithNewContentAreUploadedAgain) {
  AttnCase c{64, 8, 2, 16, 0, {{10, 5}, {3, 1}}};
  Batch b = MakeBatch(c, rng_);
  const int64_t t = b.meta.num_tokens, hd = 64, nh = 8, nkv = 2;
  const int64_t cache_elems = static_cast<int64_t>(b.num_blocks) * nkv * 16 * hd;
  auto kc = RandomBf16(cache_elems, rng_, 2.0f), vc = RandomBf16(cache_elems, rng_);
  auto dkc = Upload(*gpu_, kc, DType::kBF16, {b.num_blocks, nkv, 16, hd});
  auto dvc = Upload(*gpu_, vc, DType::kBF16, {b.num_blocks, nkv, 16, hd});
  KvLayerView cpu_cache{HostF32(kc, {b.num_blocks, nkv, 16, hd}), HostF32(vc, {b.num_blocks, nkv, 16, hd})};
  AttentionParams params{8, 2, 64, 0.125f, 0};
  for (int step = 0; step < 3; ++step) {
    // Same vectors, same sizes, new contents: shift every position back by `step` (still valid).
    for (size_t s = 0; s < 2; ++s) {
      for (int32_t tok = b.query_start[s]; tok < b.query_start[s + 1]; ++tok) {
        b.positions[tok] = std::max(0, b.positions[tok] - 1);
      }
    }
    auto q = RandomBf16(t * nh * hd, rng_, 2.0f);
    std::vector<float> ref(t * nh * hd);
    ASSERT_TRUE(cpu_->Attention(HostF32(q, {t, nh * hd}), cpu_cache, params, b.meta, HostF32(ref, {t, nh * hd})).ok());
    auto dq = Upload(*gpu_, q, DType::kBF16, {t, nh * hd});
    auto dout = Poisoned(*gpu_, DType::kBF16, {t, nh * hd});
    ASSERT_TRUE(gpu_->Attention(dq.t, {dkc.t, dvc.t}, params, b.meta, dout.t).ok());
    EXPECT_LE(Track(RelError(Download(*gpu_, dout.t), ref)), kBf16Tolerance) << "step " << step;
  }
}

}  // namespace
}  // namespace tandem
