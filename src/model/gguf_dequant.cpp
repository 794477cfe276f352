#include "model/gguf_dequant.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "common/half.h"
#include "tandem/check.h"

namespace tandem {
namespace {

constexpr int64_t kQK = 32;    // block size of the Q4_0 .. Q8_0 family
constexpr int64_t kQK_K = 256;  // block size of the k-quants
constexpr int64_t kMinElementsPerThread = 1 << 16;

inline uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline float LoadF16(const uint8_t* p) { return F16ToF32(LoadU16(p)); }

// block_q4_0: d (f16), qs[16]; element j = ((qs[j] & 15) - 8) * d, element j + 16 uses qs[j] >> 4.
void RowQ4_0(const uint8_t* x, int64_t n, float* y) {
  for (int64_t b = 0; b < n / kQK; ++b, x += 18, y += kQK) {
    const float d = LoadF16(x);
    const uint8_t* qs = x + 2;
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
      y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) - 8) * d;
    }
  }
}

// block_q4_1: d, m (f16), qs[16]; element = q * d + m.
void RowQ4_1(const uint8_t* x, int64_t n, float* y) {
  for (int64_t b = 0; b < n / kQK; ++b, x += 20, y += kQK) {
    const float d = LoadF16(x);
    const float m = LoadF16(x + 2);
    const uint8_t* qs = x + 4;
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
      y[j + kQK / 2] = static_cast<float>(qs[j] >> 4) * d + m;
    }
  }
}

// block_q5_0: d (f16), qh (u32: the 5th bit of each element), qs[16]; element = (q - 16) * d.
void RowQ5_0(const uint8_t* x, int64_t n, float* y) {
  for (int64_t b = 0; b < n / kQK; ++b, x += 22, y += kQK) {
    const float d = LoadF16(x);
    const uint32_t qh = LoadU32(x + 2);
    const uint8_t* qs = x + 6;
    for (int j = 0; j < kQK / 2; ++j) {
      const int xh0 = static_cast<int>(((qh >> j) << 4) & 0x10);
      const int xh1 = static_cast<int>((qh >> (j + 12)) & 0x10);
      y[j] = static_cast<float>(((qs[j] & 0x0F) | xh0) - 16) * d;
      y[j + kQK / 2] = static_cast<float>(((qs[j] >> 4) | xh1) - 16) * d;
    }
  }
}

// block_q5_1: d, m (f16), qh (u32), qs[16]; element = q * d + m.
void RowQ5_1(const uint8_t* x, int64_t n, float* y) {
  for (int64_t b = 0; b < n / kQK; ++b, x += 24, y += kQK) {
    const float d = LoadF16(x);
    const float m = LoadF16(x + 2);
    const uint32_t qh = LoadU32(x + 4);
    const uint8_t* qs = x + 8;
    for (int j = 0; j < kQK / 2; ++j) {
      const int xh0 = static_cast<int>(((qh >> j) << 4) & 0x10);
      const int xh1 = static_cast<int>((qh >> (j + 12)) & 0x10);
      y[j] = static_cast<float>((qs[j] & 0x0F) | xh0) * d + m;
      y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) | xh1) * d + m;
    }
  }
}

// block_q8_0: d (f16), qs[32] (int8); element = q * d.
void RowQ8_0(const uint8_t* x, int64_t n, float* y) {
  for (int64_t b = 0; b < n / kQK; ++b, x += 34, y += kQK) {
    const float d = LoadF16(x);
    const int8_t* qs = reinterpret_cast<const int8_t*>(x + 2);
    for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(qs[j]) * d;
  }
}

// The 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes of a Q4_K/Q5_K block.
inline void ScaleMinK4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = static_cast<uint8_t>((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// block_q4_K: d, dmin (f16), scales[12] (8 x 6-bit scale + 8 x 6-bit min), qs[128]; 8 sub-blocks
// of 32; element = d * sc * q - dmin * m.
void RowQ4_K(const uint8_t* x, int64_t n, float* y) {
  for (int64_t b = 0; b < n / kQK_K; ++b, x += 144) {
    const float d = LoadF16(x);
    const float dmin = LoadF16(x + 2);
    const uint8_t* scales = x + 4;
    const uint8_t* q = x + 16;
    int is = 0;
    for (int j = 0; j < kQK_K; j += 64) {
      uint8_t sc;
      uint8_t m;
      ScaleMinK4(is + 0, scales, &sc, &m);
      const float d1 = d * sc;
      const float m1 = dmin * m;
      ScaleMinK4(is + 1, scales, &sc, &m);
      const float d2 = d * sc;
      const float m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0x0F) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
      q += 32;
      is += 2;
    }
  }
}

// block_q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8), d (f16); 16
// sub-blocks of 16; element = d * scale * (q - 32).
void RowQ6_K(const uint8_t* x, int64_t n, float* y) {
  for (int64_t b = 0; b < n / kQK_K; ++b, x += 210) {
    const uint8_t* ql = x;
    const uint8_t* qh = x + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(x + 192);
    const float d = LoadF16(x + 208);
    for (int half = 0; half < kQK_K; half += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l + 0] = d * sc[is + 0] * static_cast<float>(q1);
        y[l + 32] = d * sc[is + 2] * static_cast<float>(q2);
        y[l + 64] = d * sc[is + 4] * static_cast<float>(q3);
        y[l + 96] = d * sc[is + 6] * static_cast<float>(q4);
      }
      y += 128;
      ql += 64;
      qh += 32;
      sc += 8;
    }
  }
}

void DequantizeRows(const DequantizeParams& p, int64_t row_begin, int64_t row_end) {
  const int64_t row_bytes = GgmlRowBytes(p.type, p.n_cols);
  const size_t out_size = DTypeSize(p.out_dtype);
  std::vector<float> scratch(p.out_dtype == DType::kF32 ? 0 : static_cast<size_t>(p.n_cols));
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t src_row = p.row_order.empty() ? r : p.row_order[static_cast<size_t>(r)];
    const std::byte* src = p.src.data() + src_row * row_bytes;
    std::byte* dst = p.dst.data() + static_cast<size_t>(r * p.n_cols) * out_size;
    if (p.out_dtype == DType::kBF16 && p.type == GgmlType::kBF16) {
      std::memcpy(dst, src, static_cast<size_t>(row_bytes));  // exact, NaN payloads included
      continue;
    }
    if (p.out_dtype == DType::kF32) {
      DequantizeRowToF32(p.type, src, p.n_cols, reinterpret_cast<float*>(dst));
      continue;
    }
    DequantizeRowToF32(p.type, src, p.n_cols, scratch.data());
    for (int64_t i = 0; i < p.n_cols; ++i) {
      const uint16_t h = F32ToBf16(scratch[static_cast<size_t>(i)]);
      std::memcpy(dst + i * 2, &h, sizeof(h));
    }
  }
}

}  // namespace

int64_t GgmlRowBytes(GgmlType type, int64_t n_cols) {
  const GgmlTypeTraits& traits = GetGgmlTypeTraits(type);
  return n_cols / traits.block_size * traits.type_size;
}

void DequantizeRowToF32(GgmlType type, const std::byte* src, int64_t n, float* dst) {
  const GgmlTypeTraits& traits = GetGgmlTypeTraits(type);
  TANDEM_CHECK(n % traits.block_size == 0) << traits.name << " row of " << n << " elements";
  const auto* x = reinterpret_cast<const uint8_t*>(src);
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, x, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = F16ToF32(LoadU16(x + 2 * i));
      return;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(LoadU16(x + 2 * i));
      return;
    case GgmlType::kQ4_0: return RowQ4_0(x, n, dst);
    case GgmlType::kQ4_1: return RowQ4_1(x, n, dst);
    case GgmlType::kQ5_0: return RowQ5_0(x, n, dst);
    case GgmlType::kQ5_1: return RowQ5_1(x, n, dst);
    case GgmlType::kQ8_0: return RowQ8_0(x, n, dst);
    case GgmlType::kQ4_K: return RowQ4_K(x, n, dst);
    case GgmlType::kQ6_K: return RowQ6_K(x, n, dst);
    default:
      TANDEM_CHECK(false) << "DequantizeRowToF32 called for unsupported type " << traits.name;
  }
}

Status Dequantize(const DequantizeParams& p) {
  const GgmlTypeTraits& traits = GetGgmlTypeTraits(p.type);
  if (!traits.dequantizable) {
    return InvalidArgumentError("dequantizing " + std::string(traits.name) +
                                " is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, "
                                "Q5_0, Q5_1, Q4_K, Q6_K)");
  }
  if (p.out_dtype != DType::kF32 && p.out_dtype != DType::kBF16) {
    return InvalidArgumentError("dequantize output dtype must be F32 or BF16, got " +
                                std::string(DTypeName(p.out_dtype)));
  }
  if (p.n_rows < 0 || p.n_cols < 0 || p.n_cols % traits.block_size != 0) {
    return InvalidArgumentError("cannot dequantize " + std::to_string(p.n_rows) + " x " +
                                std::to_string(p.n_cols) + " " + std::string(traits.name) +
                                ": the row length must be a multiple of the block size " +
                                std::to_string(traits.block_size));
  }
  const int64_t row_bytes = GgmlRowBytes(p.type, p.n_cols);
  if (p.n_rows != 0 && row_bytes > static_cast<int64_t>(p.src.size()) / p.n_rows) {
    return InvalidArgumentError("dequantize source holds " + std::to_string(p.src.size()) +
                                " bytes, " + std::to_string(p.n_rows) + " rows of " +
                                std::string(traits.name) + " need " +
                                std::to_string(p.n_rows) + " x " + std::to_string(row_bytes));
  }
  if (static_cast<uint64_t>(p.src.size()) != static_cast<uint64_t>(p.n_rows * row_bytes) ||
      static_cast<uint64_t>(p.dst.size()) !=
          static_cast<uint64_t>(p.n_rows * p.n_cols) * DTypeSize(p.out_dtype)) {
    return InvalidArgumentError("dequantize buffer sizes do not match " + std::to_string(p.n_rows) +
                                " x " + std::to_string(p.n_cols) + " " +
                                std::string(traits.name));
  }
  if (!p.row_order.empty()) {
    if (static_cast<int64_t>(p.row_order.size()) != p.n_rows) {
      return InvalidArgumentError("row_order has " + std::to_string(p.row_order.size()) +
                                  " entries for " + std::to_string(p.n_rows) + " rows");
    }
    for (int64_t r : p.row_order) {
      if (r < 0 || r >= p.n_rows) {
        return InvalidArgumentError("row_order entry " + std::to_string(r) + " is not in [0, " +
                                    std::to_string(p.n_rows) + ")");
      }
    }
  }
  const int64_t total = p.n_rows * p.n_cols;
  int64_t threads = std::max<int64_t>(1, std::min<int64_t>(p.num_threads, total / kMinElementsPerThread));
  threads = std::min(threads, std::max<int64_t>(p.n_rows, 1));
  if (threads <= 1) {
    DequantizeRows(p, 0, p.n_rows);
    return OkStatus();
  }
  std::vector<std::thread> workers;
  const int64_t per = (p.n_rows + threads - 1) / threads;
  for (int64_t t = 0; t < threads; ++t) {
    const int64_t begin = t * per;
    const int64_t end = std::min(p.n_rows, begin + per);
    if (begin >= end) break;
    workers.emplace_back([&p, begin, end] { DequantizeRows(p, begin, end); });
  }
  for (std::thread& w : workers) w.join();
  return OkStatus();
}

}  // namespace tandem
