// StagingArena: first-fit allocation of byte ranges inside one fixed buffer (the device staging
// memory of the NCCL KV transport, allocated once so no transfer allocates GPU memory). Hands out
// offsets; the owner maps them to its buffer. Neighbouring free ranges merge on Free.
//
// Threading: thread-safe (the engine thread allocates, the transport's threads free).
#pragma once

#include <cstddef>
#include <map>
#include <mutex>
#include <optional>

namespace tandem {

class StagingArena {
 public:
  // `alignment`: every offset is a multiple of it (a power of two).
  explicit StagingArena(size_t capacity, size_t alignment = 256);

  // The offset of `bytes` (> 0) contiguous bytes, or nullopt when no free range is large enough.
  std::optional<size_t> Allocate(size_t bytes);
  // Frees a range Allocate returned (TANDEM_CHECKs that it did).
  void Free(size_t offset);

  size_t capacity() const { return capacity_; }
  size_t bytes_in_use() const;

 private:
  const size_t capacity_;   // Constant after construction
  const size_t alignment_;  // Constant after construction
  mutable std::mutex mu_;
  std::map<size_t, size_t> free_;  // GUARDED_BY(mu_): offset -> size, disjoint, not adjacent
  std::map<size_t, size_t> used_;  // GUARDED_BY(mu_)
  size_t in_use_ = 0;              // GUARDED_BY(mu_)
};

}  // namespace tandem
