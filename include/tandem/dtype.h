// Element types of tensors in checkpoints, on backends and in the KV cache.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace tandem {

enum class DType : uint8_t {
  kF32,
  kF16,
  kBF16,
  kF64,
  kI64,
  kI32,
  kI16,
  kI8,
  kU8,
  kBool,
};

// Bytes per element.
size_t DTypeSize(DType dtype);
// Safetensors spelling: "F32", "BF16", ...
std::string_view DTypeName(DType dtype);

}  // namespace tandem
