// RoPE: ComputeRopeFrequencies for every scaling type against the HF / vLLM formulas evaluated
// here in double precision, then rounded the way rope.cpp documents (inv_freq is cast to the
// checkpoint dtype, as HF's module buffer is); and ComputeRopeTables against cos/sin of the
// float32 angle float(p) * inv_freq, times attention_scaling.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <numbers>
#include <string>
#include <vector>

#include "common/half.h"
#include "model/model_config.h"
#include "model/rope.h"
#include "support/testdata.h"

namespace tandem {
namespace {

// HF evaluates `base ** (arange(0, dim, 2) / dim)` in float32: a few float32 ulps from the exact
// value for bases up to 1e6.
constexpr double kRelTol = 2e-6;

ModelConfig Config(RopeType type, int64_t head_dim, double theta, DType dtype) {
  ModelConfig c;
  c.head_dim = head_dim;
  c.max_position_embeddings = 8192;
  c.dtype = dtype;
  c.rope.type = type;
  c.rope.theta = theta;
  return c;
}

double Pow(double base, int32_t i, int32_t dim) { return std::pow(base, 2.0 * i / dim); }

// The reference formulas, one value per i < dim / 2, in double.
std::vector<double> Reference(const ModelConfig& c, double* attention_scaling) {
  const RopeConfig& r = c.rope;
  const int32_t dim = static_cast<int32_t>(c.head_dim * r.partial_rotary_factor);
  std::vector<double> inv(dim / 2);
  *attention_scaling = 1.0;
  for (int32_t i = 0; i < dim / 2; ++i) {
    const double plain = 1.0 / Pow(r.theta, i, dim);
    switch (r.type) {
      case RopeType::kDefault:
        inv[i] = plain;
        break;
      case RopeType::kLinear:
        inv[i] = plain / r.factor;
        break;
      case RopeType::kDynamic: {
        // vLLM's DynamicNTKScalingRotaryEmbedding: base for max_len = max_pos * factor.
        const double max_pos = static_cast<double>(c.max_position_embeddings);
        const double max_len = max_pos * r.factor;
        const double base =
            r.theta * std::pow(r.factor * max_len / max_pos - (r.factor - 1.0), dim / (dim - 2.0));
        inv[i] = 1.0 / Pow(base, i, dim);
        break;
      }
      case RopeType::kLlama3: {
        const double old_len = static_cast<double>(r.original_max_position_embeddings);
        const double low_wavelen = old_len / r.low_freq_factor;
        const double high_wavelen = old_len / r.high_freq_factor;
        const double wavelen = 2.0 * std::numbers::pi / plain;
        if (wavelen < high_wavelen) {
          inv[i] = plain;
        } else if (wavelen > low_wavelen) {
          inv[i] = plain / r.factor;
        } else {
          const double smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
          inv[i] = (1.0 - smooth) * plain / r.factor + smooth * plain;
        }
        break;
      }
      case RopeType::kYarn: {
        const double orig = r.original_max_position_embeddings > 0
                                ? static_cast<double>(r.original_max_position_embeddings)
                                : static_cast<double>(c.max_position_embeddings);
        auto correction_dim = [&](double rotations) {
          return dim * std::log(orig / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(r.theta));
        };
        double low = std::max(std::floor(correction_dim(r.beta_fast)), 0.0);
        double high = std::min(std::ceil(correction_dim(r.beta_slow)), dim - 1.0);
        if (low == high) high += 0.001;
        const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
        // ramp 0: extrapolation (plain), ramp 1: interpolation (plain / factor).
        inv[i] = plain / r.factor * ramp + plain * (1.0 - ramp);
        *attention_scaling = r.attention_factor ? *r.attention_factor
                                                : (r.factor <= 1.0 ? 1.0 : 0.1 * std::log(r.factor) + 1.0);
        break;
      }
    }
  }
  return inv;
}

float RoundTo(DType d, float x) {
  if (d == DType::kBF16) return Bf16ToF32(F32ToBf16(x));
  if (d == DType::kF16) return F16ToF32(F32ToF16(x));
  return x;
}

void ExpectMatchesReference(const ModelConfig& c, const std::string& what) {
  SCOPED_TRACE(what + " dtype " + std::string(DTypeName(c.dtype)));
  double scaling = 0.0;
  const std::vector<double> ref = Reference(c, &scaling);
  const RopeFrequencies got = ComputeRopeFrequencies(c);
  EXPECT_EQ(got.rotary_dim, static_cast<int32_t>(c.head_dim * c.rope.partial_rotary_factor));
  ASSERT_EQ(got.inv_freq.size(), ref.size());
  EXPECT_NEAR(got.attention_scaling, scaling, 1e-6 * scaling);
  for (size_t i = 0; i < ref.size(); ++i) {
    const float f = got.inv_freq[i];
    if (c.dtype == DType::kF32) {
      EXPECT_NEAR(f, ref[i], kRelTol * ref[i]) << "inv_freq[" << i << "]";
    } else {
      // Rounded to the checkpoint dtype: exactly the rounding of a value within kRelTol of the
      // reference.
      EXPECT_EQ(RoundTo(c.dtype, f), f) << "inv_freq[" << i << "] not representable in the dtype";
      const float lo = RoundTo(c.dtype, static_cast<float>(ref[i] * (1.0 - kRelTol)));
      const float hi = RoundTo(c.dtype, static_cast<float>(ref[i] * (1.0 + kRelTol)));
      EXPECT_TRUE(f == lo || f == hi) << "inv_freq[" << i << "] = " << f << ", reference " << ref[i]
                                      << " rounds to " << lo << " / " << hi;
    }
  }
}

constexpr DType kDTypes[] = {DType::kF32, DType::kBF16, DType::kF16};

TEST(RopeFrequenciesTest, Default) {
  for (DType d : kDTypes) {
    for (int64_t hd : {32, 64, 128}) {
      for (double theta : {10000.0, 500000.0, 1000000.0}) {
        ExpectMatchesReference(Config(RopeType::kDefault, hd, theta, d),
                               "default hd " + std::to_string(hd) + " theta " + std::to_string(theta));
      }
    }
  }
}

TEST(RopeFrequenciesTest, PartialRotary) {
  for (DType d : kDTypes) {
    ModelConfig c = Config(RopeType::kDefault, 128, 10000.0, d);
    c.rope.partial_rotary_factor = 0.5;
    ExpectMatchesReference(c, "partial 0.5");
    EXPECT_EQ(ComputeRopeFrequencies(c).rotary_dim, 64);
  }
}

TEST(RopeFrequenciesTest, Linear) {
  for (DType d : kDTypes) {
    for (double factor : {2.0, 4.0, 8.0}) {
      ModelConfig c = Config(RopeType::kLinear, 64, 10000.0, d);
      c.rope.factor = factor;
      ExpectMatchesReference(c, "linear factor " + std::to_string(factor));
    }
  }
}

TEST(RopeFrequenciesTest, Dynamic) {
  for (DType d : kDTypes) {
    for (double factor : {2.0, 4.0}) {
      for (int64_t hd : {64, 128}) {
        ModelConfig c = Config(RopeType::kDynamic, hd, 10000.0, d);
        c.rope.factor = factor;
        ExpectMatchesReference(c, "dynamic factor " + std::to_string(factor) + " hd " + std::to_string(hd));
        // The NTK base is larger: every frequency but the first is lower than without scaling.
        const auto plain = ComputeRopeFrequencies(Config(RopeType::kDefault, hd, 10000.0, DType::kF32));
        const auto scaled = ComputeRopeFrequencies(c);
        EXPECT_EQ(scaled.inv_freq[0], 1.0f);
        EXPECT_LT(scaled.inv_freq.back(), plain.inv_freq.back());
      }
    }
  }
}

TEST(RopeFrequenciesTest, Llama3) {
  for (DType d : kDTypes) {
    for (int64_t hd : {64, 128}) {
      ModelConfig c = Config(RopeType::kLlama3, hd, 500000.0, d);
      c.rope.factor = 8.0;
      c.rope.low_freq_factor = 1.0;
      c.rope.high_freq_factor = 4.0;
      c.rope.original_max_position_embeddings = 8192;
      ExpectMatchesReference(c, "llama3 hd " + std::to_string(hd));
      c.rope.factor = 32.0;  // Llama-3.2
      c.rope.original_max_position_embeddings = 1024;
      ExpectMatchesReference(c, "llama3 factor 32 hd " + std::to_string(hd));
    }
  }
  // The three bands are all present for head_dim 128 (so the test covers the smoothing formula).
  ModelConfig c = Config(RopeType::kLlama3, 128, 500000.0, DType::kF32);
  c.rope.factor = 8.0;
  c.rope.original_max_position_embeddings = 8192;
  double scaling;
  const auto ref = Reference(c, &scaling);
  int high = 0, low = 0, medium = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double plain = 1.0 / Pow(500000.0, static_cast<int32_t>(i), 128);
    if (ref[i] == plain) {
      ++high;
    } else if (ref[i] == plain / 8.0) {
      ++low;
    } else {
      ++medium;
    }
  }
  EXPECT_GT(high, 0);
  EXPECT_GT(low, 0);
  EXPECT_GT(medium, 0);
}

TEST(RopeFrequenciesTest, Yarn) {
  for (DType d : kDTypes) {
    for (int64_t hd : {64, 128}) {
      ModelConfig c = Config(RopeType::kYarn, hd, 1000000.0, d);
      c.rope.factor = 4.0;
      c.rope.original_max_position_embeddings = 32768;
      ExpectMatchesReference(c, "yarn hd " + std::to_string(hd));
      c.rope.beta_fast = 16.0;
      c.rope.beta_slow = 2.0;
      c.rope.theta = 10000.0;
      c.rope.original_max_position_embeddings = 0;  // falls back to max_position_embeddings
      ExpectMatchesReference(c, "yarn betas 16/2 hd " + std::to_string(hd));
      c.rope.attention_factor = 1.25;
      ExpectMatchesReference(c, "yarn attention_factor hd " + std::to_string(hd));
      EXPECT_FLOAT_EQ(ComputeRopeFrequencies(c).attention_scaling, 1.25f);
    }
  }
  ModelConfig c = Config(RopeType::kYarn, 64, 10000.0, DType::kF32);
  c.rope.factor = 1.0;  // no scaling: mscale 1
  ExpectMatchesReference(c, "yarn factor 1");
  EXPECT_EQ(ComputeRopeFrequencies(c).attention_scaling, 1.0f);
}

// The checked-in llama3 config (classic rope_scaling form), through the config parser.
TEST(RopeFrequenciesTest, TinyLlama31Config) {
  auto config = LoadModelConfig(testing::ModelDir("tiny-llama31"));
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  ASSERT_EQ(config->rope.type, RopeType::kLlama3);
  ExpectMatchesReference(*config, "tiny-llama31");
}

TEST(RopeTablesTest, CosSinOfTheFloat32Angle) {
  for (float scaling : {1.0f, 1.1386294f}) {
    RopeFrequencies f;
    f.rotary_dim = 64;
    f.attention_scaling = scaling;
    for (int i = 0; i < 32; ++i) f.inv_freq.push_back(static_cast<float>(1.0 / std::pow(10000.0, i / 32.0)));
    const int64_t max_positions = 4100;
    std::vector<float> cos, sin;
    ComputeRopeTables(f, max_positions, &cos, &sin);
    ASSERT_EQ(cos.size(), static_cast<size_t>(max_positions * 32));
    ASSERT_EQ(sin.size(), cos.size());
    int bad = 0, angle_rounding_matters = 0;
    for (int64_t p = 0; p < max_positions; ++p) {
      for (int64_t i = 0; i < 32; ++i) {
        const float angle = static_cast<float>(p) * f.inv_freq[i];  // float32 product, as documented
        const double c_ref = std::cos(static_cast<double>(angle)) * scaling;
        const double s_ref = std::sin(static_cast<double>(angle)) * scaling;
        const double tol = 2.5e-7 * scaling;
        const size_t k = static_cast<size_t>(p * 32 + i);
        if ((std::abs(cos[k] - c_ref) > tol || std::abs(sin[k] - s_ref) > tol) && bad++ < 5) {
          ADD_FAILURE() << "p " << p << " i " << i << ": cos " << cos[k] << " vs " << c_ref << ", sin "
                        << sin[k] << " vs " << s_ref;
        }
        // Against the exact angle the float32 rounding shows: the tables follow HF, not math.
        const double exact = static_cast<double>(p) * f.inv_freq[i];
        angle_rounding_matters += std::abs(cos[k] - std::cos(exact) * scaling) > 1e-5;
      }
    }
    EXPECT_EQ(bad, 0);
    EXPECT_GT(angle_rounding_matters, 0);
    EXPECT_EQ(cos[0], scaling);  // position 0: angle 0
    EXPECT_EQ(sin[0], 0.0f);
  }
}

TEST(RopeTablesTest, ModelFrequenciesEndToEnd) {
  // Yarn with mscale: tables are scaled by attention_scaling.
  ModelConfig c = Config(RopeType::kYarn, 64, 10000.0, DType::kBF16);
  c.rope.factor = 4.0;
  const RopeFrequencies f = ComputeRopeFrequencies(c);
  std::vector<float> cos, sin;
  ComputeRopeTables(f, 10, &cos, &sin);
  const double mscale = 0.1 * std::log(4.0) + 1.0;
  for (int64_t i = 0; i < 32; ++i) {
    const float angle = 7.0f * f.inv_freq[i];
    EXPECT_NEAR(cos[7 * 32 + i], std::cos(static_cast<double>(angle)) * mscale, 3e-7);
    EXPECT_NEAR(sin[7 * 32 + i], std::sin(static_cast<double>(angle)) * mscale, 3e-7);
    // cos^2 + sin^2 == mscale^2
    EXPECT_NEAR(cos[7 * 32 + i] * cos[7 * 32 + i] + sin[7 * 32 + i] * sin[7 * 32 + i], mscale * mscale, 1e-6);
  }
}

}  // namespace
}  // namespace tandem
