#include "backend/cuda/pinned_upload.h"

#include <algorithm>
#include <cstring>

#include "backend/cuda/cuda_check.h"
#include "tandem/check.h"

namespace tandem {

PinnedUpload::~PinnedUpload() {
  // The owner synchronized its stream; errors on teardown have nowhere to go.
  if (copied_ != nullptr) (void)cudaEventSynchronize(copied_);
  if (host_ != nullptr) (void)cudaFreeHost(host_);
  if (device_ != nullptr) (void)cudaFree(device_);
  if (copied_ != nullptr) (void)cudaEventDestroy(copied_);
}

Status PinnedUpload::Init(cudaStream_t stream) {
  stream_ = stream;
  TANDEM_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming));
  return OkStatus();
}

StatusOr<std::byte*> PinnedUpload::BeginWrite(size_t bytes) {
  if (has_committed_) TANDEM_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(copied_));
  has_committed_ = false;
  committed_ = 0;
  if (bytes > capacity_) {
    const size_t grown = std::max<size_t>({bytes + bytes / 2, 2 * capacity_, 4096});
    // Kernels enqueued earlier may still read the old device buffer.
    TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    if (host_ != nullptr) TANDEM_CUDA_RETURN_IF_ERROR(cudaFreeHost(host_));
    if (device_ != nullptr) TANDEM_CUDA_RETURN_IF_ERROR(cudaFree(device_));
    host_ = nullptr;
    device_ = nullptr;
    capacity_ = 0;
    TANDEM_CUDA_RETURN_IF_ERROR(cudaMallocHost(reinterpret_cast<void**>(&host_), grown));
    TANDEM_CUDA_RETURN_IF_ERROR(cudaMalloc(&device_, grown));
    capacity_ = grown;
  }
  return host_;
}

Status PinnedUpload::Commit(size_t bytes) {
  TANDEM_CHECK_LE(bytes, capacity_);
  if (bytes > 0) {
    TANDEM_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(device_, host_, bytes, cudaMemcpyHostToDevice, stream_));
  }
  TANDEM_CUDA_RETURN_IF_ERROR(cudaEventRecord(copied_, stream_));
  committed_ = bytes;
  has_committed_ = true;
  return OkStatus();
}

Status PinnedUpload::Upload(const void* src, size_t bytes, bool reuse_if_same) {
  if (reuse_if_same && has_committed_ && committed_ == bytes &&
      (bytes == 0 || std::memcmp(host_, src, bytes) == 0)) {
    return OkStatus();
  }
  TANDEM_ASSIGN_OR_RETURN(std::byte * dst, BeginWrite(bytes));
  if (bytes > 0) std::memcpy(dst, src, bytes);
  return Commit(bytes);
}

}  // namespace tandem
