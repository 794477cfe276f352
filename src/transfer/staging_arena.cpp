#include "transfer/staging_arena.h"

#include "tandem/check.h"

namespace tandem {

StagingArena::StagingArena(size_t capacity, size_t alignment)
    : capacity_(capacity / alignment * alignment), alignment_(alignment) {
  TANDEM_CHECK(alignment > 0 && (alignment & (alignment - 1)) == 0) << "alignment " << alignment;
  if (capacity_ > 0) free_.emplace(0, capacity_);
}

std::optional<size_t> StagingArena::Allocate(size_t bytes) {
  TANDEM_CHECK(bytes > 0) << "empty staging allocation";
  const size_t size = (bytes + alignment_ - 1) / alignment_ * alignment_;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < size) continue;
    const size_t offset = it->first;
    const size_t left = it->second - size;
    free_.erase(it);
    if (left > 0) free_.emplace(offset + size, left);
    used_.emplace(offset, size);
    in_use_ += size;
    return offset;
  }
  return std::nullopt;
}

void StagingArena::Free(size_t offset) {
  std::lock_guard<std::mutex> lock(mu_);
  auto used = used_.find(offset);
  TANDEM_CHECK(used != used_.end()) << "freeing staging offset " << offset << " that is not in use";
  size_t begin = offset, size = used->second;
  in_use_ -= size;
  used_.erase(used);
  auto next = free_.lower_bound(begin);
  if (next != free_.end() && begin + size == next->first) {
    size += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == begin) {
      begin = prev->first;
      size += prev->second;
      free_.erase(prev);
    }
  }
  free_.emplace(begin, size);
}

size_t StagingArena::bytes_in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_use_;
}

}  // namespace tandem
