#include "backend/cuda/grow_only_device_buffer.h"

#include "backend/cuda/cuda_check.h"

namespace tandem {

GrowOnlyDeviceBuffer::~GrowOnlyDeviceBuffer() {
  if (data_ != nullptr) (void)cudaFree(data_);
}

Status GrowOnlyDeviceBuffer::Reserve(size_t bytes, cudaStream_t stream) {
  if (bytes <= capacity_) return OkStatus();
  TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  if (data_ != nullptr) TANDEM_CUDA_RETURN_IF_ERROR(cudaFree(data_));
  data_ = nullptr;
  capacity_ = 0;
  const size_t grown = bytes + bytes / 2;
  TANDEM_CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(&data_), grown));
  capacity_ = grown;
  return OkStatus();
}

}  // namespace tandem
