#include "backend/cpu/cpu_linear.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/half.h"

namespace tandem::cpu {
namespace {

// 16 float lanes: one AVX-512 register, two AVX2 registers; GCC/Clang vector extension.
typedef float V16 __attribute__((vector_size(64), aligned(4)));
constexpr int kLanes = 16;
constexpr int kRowBlock = 4;    // weight rows converted and processed together
constexpr int kTokenBlock = 4;  // activation rows processed together

inline V16 Load(const void* p) {
  V16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Converts weight row `n` (K elements) to float32 bit patterns, zero-padded to a multiple of
// kLanes. Written as integer operations so the bf16 path vectorizes (a widening shift).
void LoadWeightRow(const Tensor& w, int64_t n, int64_t k_dim, int64_t k_padded, uint32_t* dst) {
  switch (w.dtype) {
    case DType::kF32:
      std::memcpy(dst, w.as<const float>() + n * k_dim, sizeof(float) * k_dim);
      break;
    case DType::kBF16: {
      const uint16_t* src = w.as<const uint16_t>() + n * k_dim;
      for (int64_t k = 0; k < k_dim; ++k) dst[k] = static_cast<uint32_t>(src[k]) << 16;
      break;
    }
    case DType::kF16: {
      const uint16_t* src = w.as<const uint16_t>() + n * k_dim;
      for (int64_t k = 0; k < k_dim; ++k) {
        const float f = F16ToF32(src[k]);
        std::memcpy(&dst[k], &f, sizeof(f));
      }
      break;
    }
    default:
      TANDEM_CHECK(false) << "unsupported weight dtype " << DTypeName(w.dtype);
  }
  std::fill(dst + k_dim, dst + k_padded, 0u);  // +0.0f
}

float ReduceLanes(V16 acc) {
  // Fixed pairwise order.
  float s8[8];
  for (int j = 0; j < 8; ++j) s8[j] = acc[j] + acc[j + 8];
  float s4[4];
  for (int j = 0; j < 4; ++j) s4[j] = s8[j] + s8[j + 4];
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// The micro-kernel: kTokens activation rows (zero-padded to k_padded) times kRowBlock weight rows.
// Every output element goes through the same chain of fused multiply-adds over k in 16 lanes and
// the same lane reduction whatever kTokens is, so a row's result is independent of the batch it
// shares (tests/backend/cpu checks this bit for bit).
template <int kTokens>
void MicroKernel(const float* const a[kTokens], const uint32_t* w, int64_t k_padded,
                 float out[][kRowBlock]) {
  V16 acc[kTokens][kRowBlock] = {};
  for (int64_t k = 0; k < k_padded; k += kLanes) {
    V16 wv[kRowBlock];
    for (int r = 0; r < kRowBlock; ++r) wv[r] = Load(w + r * k_padded + k);
    for (int t = 0; t < kTokens; ++t) {
      const V16 av = Load(a[t] + k);
      for (int r = 0; r < kRowBlock; ++r) acc[t][r] += av * wv[r];
    }
  }
  for (int t = 0; t < kTokens; ++t) {
    for (int r = 0; r < kRowBlock; ++r) out[t][r] = ReduceLanes(acc[t][r]);
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
  if (t_dim == 0) return;
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
  const int64_t k_padded = (k_dim + kLanes - 1) / kLanes * kLanes;
  // Activations, zero-padded to k_padded when K is not a multiple of the lanes.
  const float* xp = x.as<const float>();
  int64_t x_stride = k_dim;
  std::vector<float> x_padded;
  if (k_padded != k_dim) {
    x_padded.assign(static_cast<size_t>(t_dim * k_padded), 0.0f);
    for (int64_t t = 0; t < t_dim; ++t) std::copy(xp + t * k_dim, xp + (t + 1) * k_dim, &x_padded[t * k_padded]);
    xp = x_padded.data();
    x_stride = k_padded;
  }
  float* op = out.as<float>();
  const int64_t num_blocks = (n_dim + kRowBlock - 1) / kRowBlock;
  pool.ParallelFor(num_blocks, 1, [&](int64_t begin, int64_t end) {
    // Per-thread scratch, reused across calls: no allocation in the step loop after warm-up.
    thread_local std::vector<uint32_t> wbuf;
    wbuf.resize(static_cast<size_t>(kRowBlock * k_padded));
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n0 = b * kRowBlock;
      const int rows = static_cast<int>(std::min<int64_t>(kRowBlock, n_dim - n0));
      // Missing rows of the last block repeat the last real row; their results are dropped.
      for (int r = 0; r < kRowBlock; ++r) {
        LoadWeightRow(w, n0 + std::min(r, rows - 1), k_dim, k_padded, wbuf.data() + r * k_padded);
      }
      for (int64_t t0 = 0; t0 < t_dim;) {
        const int tokens = t_dim - t0 >= kTokenBlock ? kTokenBlock : 1;
        const float* a[kTokenBlock];
        for (int t = 0; t < tokens; ++t) a[t] = xp + (t0 + t) * x_stride;
        float result[kTokenBlock][kRowBlock];
        if (tokens == kTokenBlock) {
          MicroKernel<kTokenBlock>(a, wbuf.data(), k_padded, result);
        } else {
          MicroKernel<1>(a, wbuf.data(), k_padded, result);
        }
        for (int t = 0; t < tokens; ++t) {
          for (int r = 0; r < rows; ++r) {
            float v = result[t][r];
            if (!bias_f32.empty()) v += bias_f32[n0 + r];
            op[(t0 + t) * n_dim + n0 + r] = v;
          }
        }
        t0 += tokens;
      }
    }
  });
}

}  // namespace tandem::cpu
