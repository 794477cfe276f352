// Tensor: a plain, non-owning view of backend memory (host memory on the CPU backend, device
// memory on CUDA). Row-major, contiguous. Whoever created the memory owns it; a Tensor never frees.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "tandem/check.h"
#include "tandem/dtype.h"

namespace tandem {

struct Tensor {
  static constexpr int kMaxDims = 4;

  void* data = nullptr;
  DType dtype = DType::kF32;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};

  Tensor() = default;
  Tensor(void* data_in, DType dtype_in, std::initializer_list<int64_t> dims)
      : data(data_in), dtype(dtype_in), ndim(static_cast<int>(dims.size())) {
    TANDEM_CHECK_LE(ndim, kMaxDims);
    int i = 0;
    for (int64_t d : dims) shape[i++] = d;
  }

  int64_t dim(int i) const { return shape[i < 0 ? ndim + i : i]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  size_t nbytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype); }
  bool empty() const { return data == nullptr; }

  template <typename T>
  T* as() const {
    return static_cast<T*>(data);
  }

  // Rows [begin, end) of the outermost dimension, as a view.
  Tensor Rows(int64_t begin, int64_t end) const {
    Tensor t = *this;
    size_t row_bytes = nbytes() / static_cast<size_t>(shape[0]);
    t.data = static_cast<std::byte*>(data) + static_cast<size_t>(begin) * row_bytes;
    t.shape[0] = end - begin;
    return t;
  }
};

}  // namespace tandem
