// The CUDA backend's fused small-batch ops (Backend::FusesSmallBatch: the small-M GEMV with its
// RMSNorm prologue and residual-add / SiLU·mul epilogues) against the CPU reference backend's
// unfused ops, on fresh random bf16-exact inputs for 1..4 rows, outputs poisoned with NaN before
// each run; relative error <= 1e-2. Then a chain of fused ops shaped like decode layers, launched
// back to back with programmatic dependent launch on and off: both match the CPU chain and each
// other bit for bit (a missing wait would read a half-written input); so does the chain through
// the streamed GEMV (kernels/streamed_gemv.cuh).
#include <gtest/gtest.h>

#include <bit>
#include <cstdio>
#include <string>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_backend_factory.h"
#include "kernels/small_m_gemv.cuh"
#include "kernels/streamed_gemv.cuh"
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
constexpr float kEps = 1e-5f;

// bf16 bits of bf16-exact floats: the CPU backend's weights, as a checkpoint holds them.
std::vector<uint16_t> Bits(const std::vector<float>& v) {
  std::vector<uint16_t> bits(v.size());
  for (size_t i = 0; i < v.size(); ++i) bits[i] = static_cast<uint16_t>(std::bit_cast<uint32_t>(v[i]) >> 16);
  return bits;
}

// streamed_max_rows 0: the register GEMV only; kSmallMGemvMaxRows: the streamed one where it
// takes the shape, one row of x staged in shared memory where it fits (or not: stage_x), with
// prewait ring slots filled before the programmatic wait (-1: by shape).
std::unique_ptr<Backend> MakeBackend(bool programmatic_launch, int columns_per_warp = 0,
                                     int64_t streamed_max_rows = 0, bool stage_x = true, int prewait = -1) {
  CudaBackendOptions options;
  options.programmatic_launch = programmatic_launch;
  options.small_m_gemv_columns_per_warp = columns_per_warp;
  options.small_m_gemv_streamed_max_rows = streamed_max_rows;
  options.small_m_gemv_streamed_stage_x = stage_x;
  options.small_m_gemv_streamed_prewait_segments = prewait;
  auto backend = MakeCudaBackend(options);
  if (!backend.ok()) {
    ADD_FAILURE() << backend.status().ToString();
    return nullptr;
  }
  return std::move(backend).value();
}

class FusedSmallBatchParityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gpu_ = MakeBackend(/*programmatic_launch=*/true);
    ASSERT_NE(gpu_, nullptr);
    // Two output columns per warp everywhere (the kernel picks two only past one wave).
    gpu_pairs_ = MakeBackend(/*programmatic_launch=*/true, /*columns_per_warp=*/2);
    ASSERT_NE(gpu_pairs_, nullptr);
    // Weights streamed through shared memory for 1-4 rows (k a multiple of 1024; other shapes fall back).
    gpu_streamed_ = MakeBackend(/*programmatic_launch=*/true, 0, kernels::kSmallMGemvMaxRows);
    ASSERT_NE(gpu_streamed_, nullptr);
    gpu_streamed_unstaged_ = MakeBackend(/*programmatic_launch=*/true, 0, kernels::kSmallMGemvMaxRows, false);
    ASSERT_NE(gpu_streamed_unstaged_, nullptr);
    // The whole ring requested before the wait, and none of it (x and the residual read first).
    for (int prewait : {3, 0}) {
      gpu_streamed_prewait_.push_back(MakeBackend(/*programmatic_launch=*/true, 0, kernels::kSmallMGemvMaxRows, true, prewait));
      ASSERT_NE(gpu_streamed_prewait_.back(), nullptr);
    }
    cpu_ = std::make_unique<CpuBackend>(CpuBackendConfig{0});
  }
  void TearDown() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::printf("[ kernel %s ] worst rel err %.3e over %d bf16 comparisons\n", info->name(), worst_, checks_);
  }
  double Track(double err) {
    worst_ = std::max(worst_, err);
    ++checks_;
    return err;
  }
  // CPU reference: out = rmsnorm(x) * g @ w^T (+ b), f32 throughout.
  std::vector<float> CpuNormLinear(std::vector<float>& x, std::vector<float>& g, const std::vector<uint16_t>& w,
                                   const std::vector<uint16_t>* b, int64_t m, int64_t k, int64_t n) {
    std::vector<float> normed(m * k), out(m * n);
    EXPECT_TRUE(cpu_->RmsNorm(HostF32(x, {m, k}), Tensor(), HostF32(g, {k}), kEps, HostF32(normed, {m, k})).ok());
    EXPECT_TRUE(cpu_->Linear(HostF32(normed, {m, k}), Tensor(const_cast<uint16_t*>(w.data()), DType::kBF16, {n, k}),
                             b != nullptr ? Tensor(const_cast<uint16_t*>(b->data()), DType::kBF16, {n}) : Tensor(),
                             HostF32(out, {m, n}))
                    .ok());
    return out;
  }
  // Both register GEMV layouts: one output column per warp (below one wave) and two; and streamed,
  // with one row of x staged in shared memory (k <= ~7k) and without, and with 3 and 0 ring slots
  // filled before the wait.
  std::vector<Backend*> Gpus() {
    std::vector<Backend*> gpus = {gpu_.get(), gpu_pairs_.get(), gpu_streamed_.get(), gpu_streamed_unstaged_.get()};
    for (const auto& b : gpu_streamed_prewait_) gpus.push_back(b.get());
    return gpus;
  }
  std::unique_ptr<Backend> gpu_, gpu_pairs_, gpu_streamed_, gpu_streamed_unstaged_;
  std::vector<std::unique_ptr<Backend>> gpu_streamed_prewait_;
  std::unique_ptr<CpuBackend> cpu_;
  double worst_ = 0.0;
  int checks_ = 0;
  std::mt19937 rng_{4321};
};

struct Shape {
  int64_t k, n;
};
// k below, at and past one unrolled step of 8 loads x 32 lanes x 8 (2048), odd n; n = 5003 is past
// one wave of one column per warp on 132 SMs. The streamed kernel takes k % 1024 == 0 (2 KB
// segments): one segment per row (1024), fewer rows than SMs (n < 132: fewer CTAs), many rows per
// CTA (5003), 14 segments per row (14336).
constexpr Shape kShapes[] = {{8, 5},      {200, 33},   {4096, 129}, {2056, 300}, {14336, 67}, {4104, 1027},
                             {64, 5003},  {1024, 300}, {3072, 7},   {2048, 5003}};

TEST_F(FusedSmallBatchParityTest, NormLinear) {
  for (Backend* gpu : Gpus()) {
    for (int64_t m = 1; m <= 4; ++m) {
      ASSERT_TRUE(gpu->FusesSmallBatch(m, std::vector<int64_t>{4096}));
      for (Shape s : kShapes) {
        for (DType out_dtype : {DType::kBF16, DType::kF32}) {
          for (bool with_bias : {false, true}) {
            auto x = RandomBf16(m * s.k, rng_, 3.0f);
            auto g = RandomBf16(s.k, rng_, 1.5f);
            auto w = RandomBf16(s.n * s.k, rng_, 0.1f);
            auto b = RandomBf16(s.n, rng_);
            const auto w_bits = Bits(w), b_bits = Bits(b);
            const std::vector<float> ref = CpuNormLinear(x, g, w_bits, with_bias ? &b_bits : nullptr, m, s.k, s.n);
            auto dx = Upload(*gpu, x, DType::kBF16, {m, s.k});
            auto dg = Upload(*gpu, g, DType::kBF16, {s.k});
            auto dw = Upload(*gpu, w, DType::kBF16, {s.n, s.k});
            auto db = Upload(*gpu, b, DType::kBF16, {s.n});
            auto dout = Poisoned(*gpu, out_dtype, {m, s.n});
            ASSERT_TRUE(gpu->NormLinear(dx.t, dg.t, kEps, dw.t, with_bias ? db.t : Tensor(), dout.t).ok());
            EXPECT_LE(Track(RelError(Download(*gpu, dout.t), ref)), kBf16Tolerance)
                << m << "x" << s.k << "x" << s.n << (out_dtype == DType::kF32 ? " f32" : " bf16")
                << (with_bias ? " +bias" : "");
            EXPECT_EQ(RelError(Download(*gpu, dx.t), x), 0.0) << "x was modified";
          }
        }
      }
    }
  }
}

TEST_F(FusedSmallBatchParityTest, NormLinearSiluMul) {
  for (Backend* gpu : Gpus()) {
    for (int64_t m = 1; m <= 4; ++m) {
      for (Shape s : kShapes) {
        for (bool with_bias : {false, true}) {
          auto x = RandomBf16(m * s.k, rng_, 3.0f);
          auto g = RandomBf16(s.k, rng_, 1.5f);
          auto w = RandomBf16(2 * s.n * s.k, rng_, 0.1f);
          auto b = RandomBf16(2 * s.n, rng_);
          const auto w_bits = Bits(w), b_bits = Bits(b);
          std::vector<float> gate_up = CpuNormLinear(x, g, w_bits, with_bias ? &b_bits : nullptr, m, s.k, 2 * s.n);
          std::vector<float> ref(m * s.n);
          ASSERT_TRUE(cpu_->SiluMul(HostF32(gate_up, {m, 2 * s.n}), HostF32(ref, {m, s.n})).ok());
          auto dx = Upload(*gpu, x, DType::kBF16, {m, s.k});
          auto dg = Upload(*gpu, g, DType::kBF16, {s.k});
          auto dw = Upload(*gpu, w, DType::kBF16, {2 * s.n, s.k});
          auto db = Upload(*gpu, b, DType::kBF16, {2 * s.n});
          auto dout = Poisoned(*gpu, DType::kBF16, {m, s.n});
          ASSERT_TRUE(gpu->NormLinearSiluMul(dx.t, dg.t, kEps, dw.t, with_bias ? db.t : Tensor(), dout.t).ok());
          EXPECT_LE(Track(RelError(Download(*gpu, dout.t), ref)), kBf16Tolerance)
              << m << "x" << s.k << "x" << s.n << (with_bias ? " +bias" : "");
        }
      }
    }
  }
}

TEST_F(FusedSmallBatchParityTest, LinearAddResidual) {
  for (Backend* gpu : Gpus()) {
    for (int64_t m = 1; m <= 4; ++m) {
      for (Shape s : kShapes) {
        for (bool with_bias : {false, true}) {
          auto x = RandomBf16(m * s.k, rng_);
          auto w = RandomBf16(s.n * s.k, rng_, 0.1f);
          auto b = RandomBf16(s.n, rng_);
          // A small residual: an element the kernel never wrote would stand out against x @ w^T.
          auto res = RandomBf16(m * s.n, rng_, 0.05f);
          const auto w_bits = Bits(w), b_bits = Bits(b);
          std::vector<float> ref(m * s.n);
          ASSERT_TRUE(
              cpu_->Linear(HostF32(x, {m, s.k}), Tensor(const_cast<uint16_t*>(w_bits.data()), DType::kBF16, {s.n, s.k}),
                           with_bias ? Tensor(const_cast<uint16_t*>(b_bits.data()), DType::kBF16, {s.n}) : Tensor(),
                           HostF32(ref, {m, s.n}))
                  .ok());
          for (size_t i = 0; i < ref.size(); ++i) ref[i] += res[i];
          auto dx = Upload(*gpu, x, DType::kBF16, {m, s.k});
          auto dw = Upload(*gpu, w, DType::kBF16, {s.n, s.k});
          auto db = Upload(*gpu, b, DType::kBF16, {s.n});
          auto dres = Upload(*gpu, res, DType::kBF16, {m, s.n});
          ASSERT_TRUE(gpu->LinearAddResidual(dx.t, dw.t, with_bias ? db.t : Tensor(), dres.t).ok());
          EXPECT_LE(Track(RelError(Download(*gpu, dres.t), ref)), kBf16Tolerance)
              << m << "x" << s.k << "x" << s.n << (with_bias ? " +bias" : "");
        }
      }
    }
  }
}

// A few streamed launches for compute-sanitizer (memcheck and racecheck in scripts/gpu-run.sh): the
// cp.async ring, one and three segments per row, gate and up rows; then a residual add (the
// residual read right after the wait) with x as the activations.
TEST_F(FusedSmallBatchParityTest, StreamedForSanitizers) {
  for (int64_t m : {1, 3}) {
    for (Shape s : {Shape{1024, 300}, Shape{3072, 133}}) {
      auto x = RandomBf16(m * s.k, rng_, 3.0f);
      auto g = RandomBf16(s.k, rng_, 1.5f);
      auto w = RandomBf16(2 * s.n * s.k, rng_, 0.1f);
      const auto w_bits = Bits(w);
      std::vector<float> gate_up = CpuNormLinear(x, g, w_bits, nullptr, m, s.k, 2 * s.n);
      std::vector<float> ref(m * s.n);
      ASSERT_TRUE(cpu_->SiluMul(HostF32(gate_up, {m, 2 * s.n}), HostF32(ref, {m, s.n})).ok());
      Backend& gpu = *gpu_streamed_;
      auto dx = Upload(gpu, x, DType::kBF16, {m, s.k});
      auto dg = Upload(gpu, g, DType::kBF16, {s.k});
      auto dw = Upload(gpu, w, DType::kBF16, {2 * s.n, s.k});
      auto dout = Poisoned(gpu, DType::kBF16, {m, s.n});
      ASSERT_TRUE(gpu.NormLinearSiluMul(dx.t, dg.t, kEps, dw.t, Tensor(), dout.t).ok());
      EXPECT_LE(Track(RelError(Download(gpu, dout.t), ref)), kBf16Tolerance) << m << "x" << s.k << "x" << s.n;

      // residual [m, 300] += x @ wo^T.
      const int64_t n = 300;
      auto wo = RandomBf16(n * s.k, rng_, 0.1f);
      auto res = RandomBf16(m * n, rng_, 2.0f);
      const auto wo_bits = Bits(wo);
      std::vector<float> added(m * n);
      ASSERT_TRUE(cpu_->Linear(HostF32(x, {m, s.k}), Tensor(const_cast<uint16_t*>(wo_bits.data()), DType::kBF16, {n, s.k}),
                               Tensor(), HostF32(added, {m, n}))
                      .ok());
      for (size_t i = 0; i < added.size(); ++i) added[i] += res[i];
      auto dwo = Upload(gpu, wo, DType::kBF16, {n, s.k});
      auto dres = Upload(gpu, res, DType::kBF16, {m, n});
      ASSERT_TRUE(gpu.LinearAddResidual(dx.t, dwo.t, Tensor(), dres.t).ok());
      EXPECT_LE(Track(RelError(Download(gpu, dres.t), added)), kBf16Tolerance) << "residual " << m << "x" << s.k;
    }
  }
}

// The streamed kernel's limits (the register kernel takes the rest): whole 2 KB segments per row,
// partial sums within its 32 KB (e.g. a Llama-70B gate|up, k 8192, at 3-4 rows on 132 SMs), the
// operands' own checks.
TEST_F(FusedSmallBatchParityTest, StreamedKernelRefusesWhatItCannotHold) {
  const auto* aligned = reinterpret_cast<const __nv_bfloat16*>(uintptr_t{256});
  kernels::SmallMGemvParams p;
  p.x = p.weight = p.norm_weight = aligned;
  p.epilogue = kernels::SmallMGemvEpilogue::kSiluMul;
  p.m = 2;
  p.k = 8192;
  p.n = 28672;
  EXPECT_TRUE(kernels::StreamedGemvSupports(p, 132));
  p.m = 4;  // 2 x 218 rows x 8 segments x 4 rows of x: 55,808 bytes of partial sums
  EXPECT_FALSE(kernels::StreamedGemvSupports(p, 132));
  p.m = 1;
  p.k = 8192 + 256;  // not whole segments
  EXPECT_FALSE(kernels::StreamedGemvSupports(p, 132));
  p.k = 8192;
  p.norm_weight = nullptr;  // SiLU·mul without its norm prologue
  EXPECT_FALSE(kernels::StreamedGemvSupports(p, 132));
  EXPECT_EQ(kernels::LaunchStreamedGemv(p, nullptr), cudaErrorInvalidValue);
}

TEST_F(FusedSmallBatchParityTest, RowCountsAndShapesTheKernelCannotTakeAreNotFused) {
  EXPECT_FALSE(gpu_->FusesSmallBatch(0, std::vector<int64_t>{4096}));
  EXPECT_FALSE(gpu_->FusesSmallBatch(5, std::vector<int64_t>{4096}));
  EXPECT_FALSE(gpu_->FusesSmallBatch(1, std::vector<int64_t>{4096, 100}));
  EXPECT_FALSE(cpu_->FusesSmallBatch(1, std::vector<int64_t>{4096}));
  auto off = MakeCudaBackend([] {
    CudaBackendOptions o;
    o.fuse_small_batch = false;
    return o;
  }());
  ASSERT_TRUE(off.ok());
  EXPECT_FALSE((*off)->FusesSmallBatch(1, std::vector<int64_t>{4096}));
}

// Decode-layer-shaped chains, every op reading what the one before wrote:
//   qkv = NormLinear(res); res += qkv @ o^T; act = NormLinearSiluMul(res); res += act @ down^T
// three layers, then NormLinear into f32 "logits"; all enqueued back to back, one sync at the end.
// 13 ops whose bf16 intermediates the CPU keeps in f32: a 3e-2 bound on the end result.
TEST_F(FusedSmallBatchParityTest, BackToBackChainsMatchTheCpuAndDoNotDependOnProgrammaticLaunch) {
  auto plain = MakeBackend(/*programmatic_launch=*/false);
  ASSERT_NE(plain, nullptr);
  auto streamed_plain = MakeBackend(/*programmatic_launch=*/false, 0, kernels::kSmallMGemvMaxRows);
  ASSERT_NE(streamed_plain, nullptr);
  const int64_t h = 1024, qkv_n = 1536, inter = 2816, vocab = 999, layers = 3;
  for (int64_t m = 1; m <= 4; ++m) {
    std::vector<std::vector<float>> ln1, ln2, wqkv, wo, wgu, wd;
    for (int64_t l = 0; l < layers; ++l) {
      ln1.push_back(RandomBf16(h, rng_, 1.5f));
      ln2.push_back(RandomBf16(h, rng_, 1.5f));
      wqkv.push_back(RandomBf16(qkv_n * h, rng_, 0.05f));
      wo.push_back(RandomBf16(h * qkv_n, rng_, 0.05f));
      wgu.push_back(RandomBf16(2 * inter * h, rng_, 0.05f));
      wd.push_back(RandomBf16(h * inter, rng_, 0.05f));
    }
    auto final_norm = RandomBf16(h, rng_, 1.5f);
    auto head = RandomBf16(vocab * h, rng_, 0.05f);
    auto res0 = RandomBf16(m * h, rng_, 2.0f);

    // CPU chain (f32 activations).
    std::vector<float> res = res0;
    for (int64_t l = 0; l < layers; ++l) {
      std::vector<float> qkv = CpuNormLinear(res, ln1[l], Bits(wqkv[l]), nullptr, m, h, qkv_n);
      std::vector<float> o(m * h);
      const auto wo_bits = Bits(wo[l]);
      ASSERT_TRUE(cpu_->Linear(HostF32(qkv, {m, qkv_n}),
                               Tensor(const_cast<uint16_t*>(wo_bits.data()), DType::kBF16, {h, qkv_n}), Tensor(),
                               HostF32(o, {m, h}))
                      .ok());
      for (size_t i = 0; i < res.size(); ++i) res[i] += o[i];
      std::vector<float> gu = CpuNormLinear(res, ln2[l], Bits(wgu[l]), nullptr, m, h, 2 * inter);
      std::vector<float> act(m * inter), down(m * h);
      ASSERT_TRUE(cpu_->SiluMul(HostF32(gu, {m, 2 * inter}), HostF32(act, {m, inter})).ok());
      const auto wd_bits = Bits(wd[l]);
      ASSERT_TRUE(cpu_->Linear(HostF32(act, {m, inter}),
                               Tensor(const_cast<uint16_t*>(wd_bits.data()), DType::kBF16, {h, inter}), Tensor(),
                               HostF32(down, {m, h}))
                      .ok());
      for (size_t i = 0; i < res.size(); ++i) res[i] += down[i];
    }
    const std::vector<float> ref = CpuNormLinear(res, final_norm, Bits(head), nullptr, m, h, vocab);

    std::vector<float> results[6];
    Backend* backends[6] = {gpu_.get(), plain.get(), gpu_streamed_.get(), streamed_plain.get(),
                            gpu_streamed_prewait_[0].get(), gpu_streamed_prewait_[1].get()};
    const char* names[6] = {"programmatic", "plain", "streamed", "streamed, plain launch",
                            "streamed, 3 slots before the wait", "streamed, 0 slots before the wait"};
    for (int variant = 0; variant < 6; ++variant) {
      Backend& gpu = *backends[variant];
      std::vector<gpu_testing::DeviceTensor> keep;
      auto up = [&](const std::vector<float>& v, std::initializer_list<int64_t> dims) {
        keep.push_back(Upload(gpu, v, DType::kBF16, dims));
        return keep.back().t;
      };
      Tensor dres = up(res0, {m, h});
      auto dqkv = Poisoned(gpu, DType::kBF16, {m, qkv_n});
      auto dact = Poisoned(gpu, DType::kBF16, {m, inter});
      auto dlogits = Poisoned(gpu, DType::kF32, {m, vocab});
      for (int64_t l = 0; l < layers; ++l) {
        ASSERT_TRUE(gpu.NormLinear(dres, up(ln1[l], {h}), kEps, up(wqkv[l], {qkv_n, h}), Tensor(), dqkv.t).ok());
        ASSERT_TRUE(gpu.LinearAddResidual(dqkv.t, up(wo[l], {h, qkv_n}), Tensor(), dres).ok());
        ASSERT_TRUE(
            gpu.NormLinearSiluMul(dres, up(ln2[l], {h}), kEps, up(wgu[l], {2 * inter, h}), Tensor(), dact.t).ok());
        ASSERT_TRUE(gpu.LinearAddResidual(dact.t, up(wd[l], {h, inter}), Tensor(), dres).ok());
      }
      ASSERT_TRUE(gpu.NormLinear(dres, up(final_norm, {h}), kEps, up(head, {vocab, h}), Tensor(), dlogits.t).ok());
      results[variant] = Download(gpu, dlogits.t);
      EXPECT_LE(Track(RelError(results[variant], ref)), 3 * kBf16Tolerance)
          << "rows " << m << " " << names[variant];
    }
    EXPECT_EQ(RelError(results[0], results[1]), 0.0) << "rows " << m << ": PDL changed the result";
    EXPECT_EQ(RelError(results[2], results[3]), 0.0) << "rows " << m << ": PDL changed the streamed result";
    EXPECT_EQ(RelError(results[2], results[4]), 0.0) << "rows " << m << ": the slots before the wait changed it";
    EXPECT_EQ(RelError(results[2], results[5]), 0.0) << "rows " << m << ": the slots before the wait changed it";
  }
}

}  // namespace
}  // namespace tandem
