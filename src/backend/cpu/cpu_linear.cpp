#include "backend/cpu/cpu_linear.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/half.h"

namespace tandem::cpu {
namespace {

constexpr int kLanes = 16;
constexpr int kRowBlock = 4;  // weight rows converted and processed together

// Converts weight row `n` (K elements) to float32.
void LoadWeightRow(const Tensor& w, int64_t n, int64_t k_dim, float* dst) {
  switch (w.dtype) {
    case DType::kF32:
      std::memcpy(dst, w.as<const float>() + n * k_dim, sizeof(float) * k_dim);
      break;
    case DType::kBF16: {
      const uint16_t* src = w.as<const uint16_t>() + n * k_dim;
      for (int64_t k = 0; k < k_dim; ++k) dst[k] = Bf16ToF32(src[k]);
      break;
    }
    case DType::kF16: {
      const uint16_t* src = w.as<const uint16_t>() + n * k_dim;
      for (int64_t k = 0; k < k_dim; ++k) dst[k] = F16ToF32(src[k]);
      break;
    }
    default:
      TANDEM_CHECK(false) << "unsupported weight dtype " << DTypeName(w.dtype);
  }
}

float ReduceLanes(const float* acc) {
  // Fixed pairwise order.
  float s8[8];
  for (int j = 0; j < 8; ++j) s8[j] = acc[j] + acc[j + 8];
  float s4[4];
  for (int j = 0; j < 4; ++j) s4[j] = s8[j] + s8[j + 4];
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// out[t, n0 + r] for r < rows, all t.
void RowBlock(const float* x, int64_t t_dim, int64_t k_dim, const float* wrows, int rows,
              const float* bias, int64_t n0, float* out, int64_t n_dim) {
  const int64_t k_main = k_dim - k_dim % kLanes;
  for (int64_t t = 0; t < t_dim; ++t) {
    const float* a = x + t * k_dim;
    float acc[kRowBlock][kLanes] = {};
    for (int64_t k = 0; k < k_main; k += kLanes) {
      for (int r = 0; r < kRowBlock; ++r) {
        if (r >= rows) break;
        const float* wr = wrows + r * k_dim + k;
        for (int j = 0; j < kLanes; ++j) acc[r][j] += a[k + j] * wr[j];
      }
    }
    for (int r = 0; r < rows; ++r) {
      const float* wr = wrows + r * k_dim;
      for (int64_t k = k_main; k < k_dim; ++k) acc[r][k - k_main] += a[k] * wr[k];
      float v = ReduceLanes(acc[r]);
      if (bias != nullptr) v += bias[r];
      out[t * n_dim + n0 + r] = v;
    }
  }
}

}  // namespace

void Linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor out, ThreadPool& pool) {
  TANDEM_CHECK(x.dtype == DType::kF32 && out.dtype == DType::kF32);
  const int64_t t_dim = x.dim(0);
  const int64_t k_dim = x.dim(-1);
  const int64_t n_dim = w.dim(0);
  TANDEM_CHECK_EQ(w.dim(1), k_dim);
  TANDEM_CHECK_EQ(out.dim(0), t_dim);
  TANDEM_CHECK_EQ(out.dim(-1), n_dim);
  std::vector<float> bias_f32;
  if (!bias.empty()) {
    TANDEM_CHECK_EQ(bias.numel(), n_dim);
    bias_f32.resize(n_dim);
    for (int64_t n = 0; n < n_dim; ++n) {
      switch (bias.dtype) {
        case DType::kF32: bias_f32[n] = bias.as<const float>()[n]; break;
        case DType::kBF16: bias_f32[n] = Bf16ToF32(bias.as<const uint16_t>()[n]); break;
        case DType::kF16: bias_f32[n] = F16ToF32(bias.as<const uint16_t>()[n]); break;
        default: TANDEM_CHECK(false) << "unsupported bias dtype";
      }
    }
  }
  const int64_t num_blocks = (n_dim + kRowBlock - 1) / kRowBlock;
  const float* xp = x.as<const float>();
  float* op = out.as<float>();
  pool.ParallelFor(num_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> wbuf(static_cast<size_t>(kRowBlock * k_dim));
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n0 = b * kRowBlock;
      const int rows = static_cast<int>(std::min<int64_t>(kRowBlock, n_dim - n0));
      for (int r = 0; r < rows; ++r) LoadWeightRow(w, n0 + r, k_dim, wbuf.data() + r * k_dim);
      RowBlock(xp, t_dim, k_dim, wbuf.data(), rows, bias_f32.empty() ? nullptr : &bias_f32[n0], n0,
               op, n_dim);
    }
  });
}

}  // namespace tandem::cpu
