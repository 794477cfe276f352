// PinnedUpload: a grow-only pair of pinned host staging memory and device memory for the small
// per-step host -> device copies of the CUDA backend (token ids, row indices, attention metadata).
// A copy is enqueued on the backend's stream (stream-ordered after every kernel that read the
// previous contents) and recorded on an event; the staging memory is rewritten only after that
// event, so the host never waits on the GPU except when a copy is still in flight.
//
// Threading: used by the backend's one driving thread. Constant after construction: stream_.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "tandem/status.h"

namespace tandem {

class PinnedUpload {
 public:
  PinnedUpload() = default;
  ~PinnedUpload();
  PinnedUpload(const PinnedUpload&) = delete;
  PinnedUpload& operator=(const PinnedUpload&) = delete;

  // Binds the stream the copies run on (the backend's). Creates the event.
  Status Init(cudaStream_t stream);

  // Staging memory of at least `bytes` bytes to fill, after the previous copy out of it finished.
  // Grows both buffers when needed (synchronizing the stream first, since kernels may still read
  // the old device buffer).
  StatusOr<std::byte*> BeginWrite(size_t bytes);
  // Enqueues the copy of the first `bytes` staged bytes to device().
  Status Commit(size_t bytes);
  // BeginWrite + memcpy + Commit. With `reuse_if_same`, skips the copy when the last committed
  // bytes are exactly these.
  Status Upload(const void* src, size_t bytes, bool reuse_if_same);

  // What was last committed (valid until the next BeginWrite) and its device copy.
  const std::byte* host() const { return host_; }
  size_t committed_bytes() const { return committed_; }
  void* device() const { return device_; }

 private:
  cudaStream_t stream_ = nullptr;
  cudaEvent_t copied_ = nullptr;
  std::byte* host_ = nullptr;
  void* device_ = nullptr;
  size_t capacity_ = 0;
  size_t committed_ = 0;
  bool has_committed_ = false;
};

}  // namespace tandem
