// GrowOnlyDeviceBuffer: device workspace of the CUDA backend that only grows (the split-KV
// attention's partial states, the sampling kernel's results). Growing waits for the stream first
// (kernels enqueued earlier may still use the old memory), frees it, and allocates 1.5x what was
// asked, so a slowly growing need reallocates rarely. Freed with the object.
//
// Threading: used by the backend's one driving thread.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "tandem/status.h"

namespace tandem {

class GrowOnlyDeviceBuffer {
 public:
  GrowOnlyDeviceBuffer() = default;
  ~GrowOnlyDeviceBuffer();
  GrowOnlyDeviceBuffer(const GrowOnlyDeviceBuffer&) = delete;
  GrowOnlyDeviceBuffer& operator=(const GrowOnlyDeviceBuffer&) = delete;

  // At least `bytes` bytes at data(); grows (after synchronizing `stream`) when it holds fewer.
  Status Reserve(size_t bytes, cudaStream_t stream);
  std::byte* data() const { return data_; }
  size_t capacity() const { return capacity_; }

 private:
  std::byte* data_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace tandem
