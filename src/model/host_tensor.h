// HostTensor: a read-only view of a tensor in host memory (a memory-mapped checkpoint, a
// dequantized GGUF buffer, seeded dummy weights) plus whatever keeps those bytes alive.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tandem/dtype.h"

namespace tandem {

struct HostTensor {
  std::string name;                  // checkpoint name, e.g. "model.layers.0.self_attn.q_proj.weight"
  std::string source;                // file it came from (for error messages)
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;        // row-major; shape[0] is the outermost dimension
  const std::byte* data = nullptr;   // valid while `keepalive` (or its owner) lives
  std::shared_ptr<const void> keepalive;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  size_t nbytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype); }
};

}  // namespace tandem
