#include "model/rope.h"

#include <algorithm>
#include <cmath>

#include "common/half.h"

namespace tandem {
namespace {

constexpr double kPi = 3.14159265358979323846;

// HF: 1 / base ** (arange(0, dim, 2) / dim), in float32.
std::vector<float> DefaultInvFreq(double base, int32_t dim) {
  std::vector<float> inv(dim / 2);
  for (int32_t i = 0; i < dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    const float power = static_cast<float>(std::pow(base, static_cast<double>(exponent)));
    inv[i] = 1.0f / power;
  }
  return inv;
}

float YarnGetMscale(double scale, double mscale = 1.0) {
  if (scale <= 1.0) return 1.0f;
  return static_cast<float>(0.1 * mscale * std::log(scale) + 1.0);
}

}  // namespace

RopeFrequencies ComputeRopeFrequencies(const ModelConfig& config) {
  const RopeConfig& rope = config.rope;
  RopeFrequencies out;
  out.rotary_dim = static_cast<int32_t>(static_cast<double>(config.head_dim) * rope.partial_rotary_factor);
  const int32_t dim = out.rotary_dim;
  double base = rope.theta;
  switch (rope.type) {
    case RopeType::kDefault:
      out.inv_freq = DefaultInvFreq(base, dim);
      break;
    case RopeType::kLinear:
      out.inv_freq = DefaultInvFreq(base, dim);
      for (float& f : out.inv_freq) f = f / static_cast<float>(rope.factor);
      break;
    case RopeType::kDynamic: {
      // NTK-aware base for the longest supported context (fixed, so cached keys stay valid).
      const double max_pos = static_cast<double>(config.max_position_embeddings);
      const double seq_len = max_pos * rope.factor;
      base = base * std::pow((rope.factor * seq_len / max_pos) - (rope.factor - 1.0),
                             static_cast<double>(dim) / (dim - 2));
      out.inv_freq = DefaultInvFreq(base, dim);
      break;
    }
    case RopeType::kLlama3: {
      out.inv_freq = DefaultInvFreq(base, dim);
      const double factor = rope.factor;
      const double old_len = static_cast<double>(rope.original_max_position_embeddings);
      const double low_wavelen = old_len / rope.low_freq_factor;
      const double high_wavelen = old_len / rope.high_freq_factor;
      for (float& f : out.inv_freq) {
        const float wavelen = static_cast<float>(2.0 * kPi) / f;
        float result = f;
        if (wavelen > low_wavelen) result = f / static_cast<float>(factor);
        const float smooth = (static_cast<float>(old_len) / wavelen - static_cast<float>(rope.low_freq_factor)) /
                             static_cast<float>(rope.high_freq_factor - rope.low_freq_factor);
        const float smoothed = ((1.0f - smooth) * f) / static_cast<float>(factor) + smooth * f;
        const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
        if (medium) result = smoothed;
        f = result;
      }
      break;
    }
    case RopeType::kYarn: {
      const double factor = rope.factor;
      const double orig = rope.original_max_position_embeddings > 0
                              ? static_cast<double>(rope.original_max_position_embeddings)
                              : static_cast<double>(config.max_position_embeddings);
      out.attention_scaling = rope.attention_factor ? static_cast<float>(*rope.attention_factor)
                                                    : YarnGetMscale(factor);
      auto correction_dim = [&](double rotations) {
        return (dim * std::log(orig / (rotations * 2.0 * kPi))) / (2.0 * std::log(base));
      };
      double low = std::floor(correction_dim(rope.beta_fast));
      double high = std::ceil(correction_dim(rope.beta_slow));
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(dim - 1));
      if (low == high) high += 0.001;
      out.inv_freq.resize(dim / 2);
      for (int32_t i = 0; i < dim / 2; ++i) {
        const float pos_freq = static_cast<float>(
            std::pow(base, static_cast<double>(static_cast<float>(2 * i) / static_cast<float>(dim))));
        const float extrapolation = 1.0f / pos_freq;
        const float interpolation = 1.0f / (static_cast<float>(factor) * pos_freq);
        float ramp = static_cast<float>((i - low) / (high - low));
        ramp = std::clamp(ramp, 0.0f, 1.0f);
        const float extrapolation_factor = 1.0f - ramp;
        out.inv_freq[i] = interpolation * (1.0f - extrapolation_factor) +
                          extrapolation * extrapolation_factor;
      }
      break;
    }
  }
  // HF transformers keeps inv_freq as a module buffer, which is cast with the weights when a
  // bf16/fp16 checkpoint is loaded: the frequencies it rotates by are rounded to the checkpoint
  // dtype. Do the same so logits match HF to float32 precision (the goldens confirm it: without
  // this rounding the error grows with position to ~1e-1 at 1000 tokens).
  for (float& f : out.inv_freq) {
    if (config.dtype == DType::kBF16) f = Bf16ToF32(F32ToBf16(f));
    if (config.dtype == DType::kF16) f = F16ToF32(F32ToF16(f));
  }
  return out;
}

void ComputeRopeTables(const RopeFrequencies& freqs, int64_t max_positions, std::vector<float>* cos,
                       std::vector<float>* sin) {
  const int64_t half = freqs.rotary_dim / 2;
  cos->resize(static_cast<size_t>(max_positions * half));
  sin->resize(static_cast<size_t>(max_positions * half));
  for (int64_t p = 0; p < max_positions; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(p) * freqs.inv_freq[i];
      (*cos)[p * half + i] = static_cast<float>(std::cos(static_cast<double>(angle))) * freqs.attention_scaling;
      (*sin)[p * half + i] = static_cast<float>(std::sin(static_cast<double>(angle))) * freqs.attention_scaling;
    }
  }
}

}  // namespace tandem
