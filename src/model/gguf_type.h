// GgmlType: the element types of tensors in GGUF files (ggml's `enum ggml_type`), with their block
// layouts. A quantized type stores `block_size` elements in `type_size` bytes; a row (ne[0]
// elements) is always a whole number of blocks.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace tandem {

// Values are ggml's on-disk type ids (stable across ggml versions).
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
};

struct GgmlTypeTraits {
  GgmlType type;
  std::string_view name;  // ggml's spelling: "Q4_K", "BF16"
  int64_t block_size;     // elements per block (1 for plain types)
  int64_t type_size;      // bytes per block
  bool dequantizable;     // GgufDequantize supports it
};

// Traits of the type with on-disk id `id`, or nullptr when ggml has no such type (or we do not
// know its layout).
const GgmlTypeTraits* FindGgmlTypeTraits(uint32_t id);
// Traits of a known type (never null).
const GgmlTypeTraits& GetGgmlTypeTraits(GgmlType type);

// "Q4_K", or "type 77" for an unknown id.
std::string GgmlTypeName(uint32_t id);

}  // namespace tandem
