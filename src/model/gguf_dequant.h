// Dequantization of GGUF tensor data (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K) to
// f32 or bf16, bit-for-bit the arithmetic of ggml's `dequantize_row_*` (ggml-quants.c) up to float
// contraction. Stateless and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "model/gguf_type.h"
#include "tandem/dtype.h"
#include "tandem/status.h"

namespace tandem {

struct DequantizeParams {
  GgmlType type = GgmlType::kF32;
  std::span<const std::byte> src;  // n_rows rows of n_cols elements, rows back to back
  int64_t n_rows = 0;
  int64_t n_cols = 0;              // a multiple of the type's block size
  DType out_dtype = DType::kBF16;  // kF32 or kBF16
  std::span<std::byte> dst;        // n_rows * n_cols * DTypeSize(out_dtype) bytes
  // Output row i is source row row_order[i] (a permutation); empty: the identity.
  std::span<const int64_t> row_order;
  int num_threads = 1;  // worker threads over rows (small tensors use one)
};

// InvalidArgument for an unsupported type or output dtype, a row length that is not a whole number
// of blocks, buffer sizes that do not match, or a row_order that is not a valid row index list.
Status Dequantize(const DequantizeParams& params);

// One row of `n` elements (a multiple of the block size) to f32; `src` holds exactly the row's
// bytes. The caller guarantees sizes (an invariant, checked).
void DequantizeRowToF32(GgmlType type, const std::byte* src, int64_t n, float* dst);

// Bytes of one row of `n_cols` elements (n_cols a multiple of the block size).
int64_t GgmlRowBytes(GgmlType type, int64_t n_cols);

}  // namespace tandem
