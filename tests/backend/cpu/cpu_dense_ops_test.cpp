// CpuBackend's dense ops against straightforward double-precision references on fresh random
// inputs: Linear (f32/bf16/f16 weights, with and without bias, odd shapes), RmsNorm (with and
// without residual), SiluMul, Embedding, GatherRows. Outputs are poisoned with NaN before each call
// so an element the op forgets to write fails. Linear must also give bit-identical rows whatever
// the batch around them (the engine's seeded sampling relies on it).
//
// Error measure: |got - ref| <= 1e-5 * scale, where scale is |ref| for element-wise ops and, for
// sums (dot products, norms), the sum of the absolute values of the terms (the magnitude that
// float32 rounding is relative to; a plain |ref| would be ill-conditioned under cancellation).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "common/half.h"

namespace tandem {
namespace {

constexpr double kRelTol = 1e-5;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Host storage of a tensor of any float dtype, with its exact float64 values.
struct Stored {
  DType dtype = DType::kF32;
  std::vector<float> f32;
  std::vector<uint16_t> u16;
  std::vector<double> exact;  // the values the backend must read (after rounding to dtype)
  Tensor View(std::initializer_list<int64_t> dims) {
    return Tensor(dtype == DType::kF32 ? static_cast<void*>(f32.data()) : u16.data(), dtype, dims);
  }
};

Stored Store(const std::vector<float>& values, DType dtype) {
  Stored s;
  s.dtype = dtype;
  s.exact.resize(values.size());
  if (dtype == DType::kF32) {
    s.f32 = values;
    for (size_t i = 0; i < values.size(); ++i) s.exact[i] = values[i];
  } else {
    s.u16.resize(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      s.u16[i] = dtype == DType::kBF16 ? F32ToBf16(values[i]) : F32ToF16(values[i]);
      s.exact[i] = dtype == DType::kBF16 ? Bf16ToF32(s.u16[i]) : F16ToF32(s.u16[i]);
    }
  }
  return s;
}

std::vector<float> Random(std::mt19937& rng, size_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::string Name(DType d) { return std::string(DTypeName(d)); }

constexpr DType kWeightDTypes[] = {DType::kF32, DType::kBF16, DType::kF16};

class CpuDenseOpsTest : public ::testing::Test {
 protected:
  CpuBackend backend_{CpuBackendConfig{2}};
  std::mt19937 rng_{12345};
};

void CheckLinear(CpuBackend& backend, std::mt19937& rng, int64_t t_dim, int64_t k_dim, int64_t n_dim,
                 DType wdtype, bool with_bias) {
  SCOPED_TRACE("T=" + std::to_string(t_dim) + " K=" + std::to_string(k_dim) + " N=" +
               std::to_string(n_dim) + " " + Name(wdtype) + (with_bias ? " bias" : ""));
  std::vector<float> x = Random(rng, t_dim * k_dim, -2.0f, 2.0f);
  Stored w = Store(Random(rng, n_dim * k_dim), wdtype);
  Stored b = Store(Random(rng, n_dim), wdtype);
  std::vector<float> out(t_dim * n_dim, kNaN);
  Tensor bias = with_bias ? b.View({n_dim}) : Tensor();
  ASSERT_TRUE(backend.Linear(Tensor(x.data(), DType::kF32, {t_dim, k_dim}), w.View({n_dim, k_dim}), bias,
                             Tensor(out.data(), DType::kF32, {t_dim, n_dim}))
                  .ok());
  int bad = 0;
  for (int64_t t = 0; t < t_dim; ++t) {
    for (int64_t n = 0; n < n_dim; ++n) {
      double ref = with_bias ? b.exact[n] : 0.0;
      double mag = std::abs(ref);
      for (int64_t k = 0; k < k_dim; ++k) {
        const double term = static_cast<double>(x[t * k_dim + k]) * w.exact[n * k_dim + k];
        ref += term;
        mag += std::abs(term);
      }
      const double got = out[t * n_dim + n];
      if (!(std::abs(got - ref) <= kRelTol * mag) && bad++ < 5) {
        ADD_FAILURE() << "out[" << t << ", " << n << "] = " << got << ", reference " << ref
                      << " (magnitude " << mag << ")";
      }
    }
  }
  EXPECT_EQ(bad, 0);
}

TEST_F(CpuDenseOpsTest, LinearMatchesDoubleReference) {
  const int64_t ts[] = {1, 3, 16, 33};
  const int64_t ks[] = {1, 5, 16, 17, 64, 100, 257};
  const int64_t ns[] = {1, 3, 4, 5, 13, 64, 130};
  int i = 0;
  for (int64_t t : ts) {
    for (int64_t k : ks) {
      for (int64_t n : ns) {
        const DType d = kWeightDTypes[i % 3];
        const bool bias = (i / 3) % 2 == 1;
        ++i;
        CheckLinear(backend_, rng_, t, k, n, d, bias);
      }
    }
  }
  // Larger, model-like shapes for every dtype, with and without bias.
  for (DType d : kWeightDTypes) {
    for (bool bias : {false, true}) CheckLinear(backend_, rng_, 7, 1000, 97, d, bias);
  }
}

// A row's output is bit-identical whether it is computed alone, inside any sub-batch, or in the
// full batch, and with 1 or 2 threads.
TEST_F(CpuDenseOpsTest, LinearRowsAreBitIdenticalWhateverTheBatch) {
  const int64_t t_dim = 37, k_dim = 301, n_dim = 70;
  for (DType d : kWeightDTypes) {
    SCOPED_TRACE(Name(d));
    std::vector<float> x = Random(rng_, t_dim * k_dim, -3.0f, 3.0f);
    Stored w = Store(Random(rng_, n_dim * k_dim), d);
    Stored b = Store(Random(rng_, n_dim), d);
    const Tensor xt(x.data(), DType::kF32, {t_dim, k_dim});
    std::vector<float> full(t_dim * n_dim, kNaN);
    ASSERT_TRUE(backend_.Linear(xt, w.View({n_dim, k_dim}), b.View({n_dim}),
                                Tensor(full.data(), DType::kF32, {t_dim, n_dim}))
                    .ok());
    CpuBackend single(CpuBackendConfig{1});
    std::uniform_int_distribution<int64_t> pick(0, t_dim - 1);
    for (int trial = 0; trial < 40; ++trial) {
      int64_t begin = pick(rng_), end = pick(rng_);
      if (begin > end) std::swap(begin, end);
      end += 1;
      if (trial < 5) end = begin + 1;  // single rows
      std::vector<float> part((end - begin) * n_dim, kNaN);
      CpuBackend& be = trial % 2 ? single : backend_;
      ASSERT_TRUE(be.Linear(xt.Rows(begin, end), w.View({n_dim, k_dim}), b.View({n_dim}),
                            Tensor(part.data(), DType::kF32, {end - begin, n_dim}))
                      .ok());
      EXPECT_EQ(std::memcmp(part.data(), full.data() + begin * n_dim, part.size() * sizeof(float)), 0)
          << "rows [" << begin << ", " << end << ") differ from the full batch";
    }
  }
}

void CheckRmsNorm(CpuBackend& backend, std::mt19937& rng, int64_t t_dim, int64_t h_dim, DType wdtype,
                  bool with_residual, float eps) {
  SCOPED_TRACE("T=" + std::to_string(t_dim) + " H=" + std::to_string(h_dim) + " " + Name(wdtype) +
               (with_residual ? " residual" : "") + " eps=" + std::to_string(eps));
  std::vector<float> x = Random(rng, t_dim * h_dim, -3.0f, 3.0f);
  const std::vector<float> x_before = x;
  std::vector<float> residual = Random(rng, t_dim * h_dim, -3.0f, 3.0f);
  const std::vector<float> residual_before = residual;
  Stored w = Store(Random(rng, h_dim, 0.5f, 1.5f), wdtype);
  std::vector<float> out(t_dim * h_dim, kNaN);
  Tensor res_t = with_residual ? Tensor(residual.data(), DType::kF32, {t_dim, h_dim}) : Tensor();
  ASSERT_TRUE(backend.RmsNorm(Tensor(x.data(), DType::kF32, {t_dim, h_dim}), res_t, w.View({h_dim}), eps,
                              Tensor(out.data(), DType::kF32, {t_dim, h_dim}))
                  .ok());
  EXPECT_EQ(x, x_before) << "x was modified";
  int bad = 0;
  for (int64_t t = 0; t < t_dim; ++t) {
    std::vector<double> src(h_dim);
    for (int64_t h = 0; h < h_dim; ++h) {
      const int64_t i = t * h_dim + h;
      if (with_residual) {
        // residual += x: one float32 addition per element, exactly.
        const float sum = residual_before[i] + x_before[i];
        EXPECT_EQ(residual[i], sum) << "residual[" << t << ", " << h << "]";
        src[h] = sum;
      } else {
        src[h] = x_before[i];
      }
    }
    double sum_sq = 0.0;
    for (double v : src) sum_sq += v * v;
    const double inv = 1.0 / std::sqrt(sum_sq / static_cast<double>(h_dim) + static_cast<double>(eps));
    for (int64_t h = 0; h < h_dim; ++h) {
      const double ref = w.exact[h] * src[h] * inv;
      const double got = out[t * h_dim + h];
      if (!(std::abs(got - ref) <= kRelTol * std::abs(ref)) && bad++ < 5) {
        ADD_FAILURE() << "out[" << t << ", " << h << "] = " << got << ", reference " << ref;
      }
    }
  }
  EXPECT_EQ(bad, 0);
  if (!with_residual) {
    EXPECT_EQ(residual, residual_before);
  }
}

TEST_F(CpuDenseOpsTest, RmsNormMatchesDoubleReference) {
  int i = 0;
  for (int64_t t : {1, 2, 9, 33}) {
    for (int64_t h : {1, 7, 64, 100, 257, 1000}) {
      for (bool residual : {false, true}) {
        CheckRmsNorm(backend_, rng_, t, h, kWeightDTypes[i % 3], residual, i % 2 ? 1e-5f : 1e-6f);
        ++i;
      }
    }
  }
  // Tiny inputs: eps dominates the variance.
  std::vector<float> x(16, 1e-4f);
  std::vector<float> w(16, 1.0f);
  std::vector<float> out(16, kNaN);
  ASSERT_TRUE(backend_.RmsNorm(Tensor(x.data(), DType::kF32, {1, 16}), Tensor(),
                               Tensor(w.data(), DType::kF32, {16}), 1e-2f,
                               Tensor(out.data(), DType::kF32, {1, 16}))
                  .ok());
  const double ref = 1e-4 / std::sqrt(1e-8 + 1e-2);
  for (float o : out) EXPECT_NEAR(o, ref, kRelTol * ref);
}

TEST_F(CpuDenseOpsTest, SiluMulMatchesDoubleReference) {
  for (int64_t t : {1, 3, 17}) {
    for (int64_t inter : {1, 5, 64, 129, 1000}) {
      SCOPED_TRACE("T=" + std::to_string(t) + " I=" + std::to_string(inter));
      const int64_t n = t * inter;
      std::vector<float> gate = Random(rng_, n, -10.0f, 10.0f);
      std::vector<float> up = Random(rng_, n, -3.0f, 3.0f);
      std::vector<float> out(n, kNaN);
      // The fused layout: per row the gate values, then the up values.
      std::vector<float> gate_up;
      for (int64_t r = 0; r < t; ++r) {
        gate_up.insert(gate_up.end(), gate.begin() + r * inter, gate.begin() + (r + 1) * inter);
        gate_up.insert(gate_up.end(), up.begin() + r * inter, up.begin() + (r + 1) * inter);
      }
      ASSERT_TRUE(backend_.SiluMul(Tensor(gate_up.data(), DType::kF32, {t, 2 * inter}),
                                   Tensor(out.data(), DType::kF32, {t, inter}))
                      .ok());
      int bad = 0;
      for (int64_t i = 0; i < n; ++i) {
        const double g = gate[i];
        const double ref = g / (1.0 + std::exp(-g)) * static_cast<double>(up[i]);
        if (!(std::abs(out[i] - ref) <= kRelTol * std::abs(ref)) && bad++ < 5) {
          ADD_FAILURE() << "out[" << i << "] = " << out[i] << ", reference " << ref;
        }
      }
      EXPECT_EQ(bad, 0);
    }
  }
}

TEST_F(CpuDenseOpsTest, EmbeddingCopiesTableRowsExactly) {
  for (DType d : kWeightDTypes) {
    for (int64_t hidden : {1, 7, 64, 130}) {
      SCOPED_TRACE(Name(d) + " H=" + std::to_string(hidden));
      const int64_t vocab = 53;
      Stored table = Store(Random(rng_, vocab * hidden, -5.0f, 5.0f), d);
      std::vector<int32_t> ids = {0, 52, 17, 17, 3, 0, 52, 41, 9};
      std::uniform_int_distribution<int32_t> pick(0, vocab - 1);
      for (int i = 0; i < 20; ++i) ids.push_back(pick(rng_));
      const int64_t t = static_cast<int64_t>(ids.size());
      std::vector<float> out(t * hidden, kNaN);
      ASSERT_TRUE(backend_.Embedding(ids, table.View({vocab, hidden}),
                                     Tensor(out.data(), DType::kF32, {t, hidden}))
                      .ok());
      for (int64_t i = 0; i < t; ++i) {
        for (int64_t h = 0; h < hidden; ++h) {
          ASSERT_EQ(out[i * hidden + h], table.exact[ids[i] * hidden + h])
              << "token " << i << " (id " << ids[i] << "), element " << h;
        }
      }
    }
  }
}

TEST_F(CpuDenseOpsTest, GatherRowsCopiesTheRowsAskedFor) {
  for (int64_t hidden : {1, 5, 64, 257}) {
    SCOPED_TRACE("H=" + std::to_string(hidden));
    const int64_t t_dim = 23;
    std::vector<float> x = Random(rng_, t_dim * hidden, -5.0f, 5.0f);
    std::vector<int32_t> rows = {22, 0, 5, 5, 11};
    std::uniform_int_distribution<int32_t> pick(0, t_dim - 1);
    for (int i = 0; i < 10; ++i) rows.push_back(pick(rng_));
    const int64_t r_dim = static_cast<int64_t>(rows.size());
    std::vector<float> out(r_dim * hidden, kNaN);
    ASSERT_TRUE(backend_.GatherRows(Tensor(x.data(), DType::kF32, {t_dim, hidden}), rows,
                                    Tensor(out.data(), DType::kF32, {r_dim, hidden}))
                    .ok());
    for (int64_t r = 0; r < r_dim; ++r) {
      EXPECT_EQ(std::memcmp(out.data() + r * hidden, x.data() + rows[r] * hidden, hidden * sizeof(float)), 0)
          << "row " << r << " (source row " << rows[r] << ")";
    }
  }
  // Empty selection writes nothing.
  std::vector<float> x(8, 1.0f);
  std::vector<float> out(4, kNaN);
  ASSERT_TRUE(backend_.GatherRows(Tensor(x.data(), DType::kF32, {2, 4}), {},
                                  Tensor(out.data(), DType::kF32, {0, 4}))
                  .ok());
  for (float o : out) EXPECT_TRUE(std::isnan(o));
}

}  // namespace
}  // namespace tandem
