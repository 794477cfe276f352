// KvCache: the memory of one worker's paged KV cache, per layer K and V of shape
// [num_blocks, num_kv_heads, block_size, head_dim], allocated once from the backend. The
// BlockManager decides which block ids a sequence uses; this class only owns the bytes.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"

namespace tandem {

struct KvCacheShape {
  int32_t num_layers = 0;
  int32_t num_blocks = 0;
  int32_t block_size = 16;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  DType dtype = DType::kF32;

  // Bytes one block takes across all layers, K and V.
  int64_t BytesPerBlock() const;
};

class KvCache {
 public:
  static StatusOr<std::unique_ptr<KvCache>> Create(Backend& backend, const KvCacheShape& shape);

  const KvCacheShape& shape() const { return shape_; }
  KvLayerView layer(int32_t i) const { return layers_[i]; }

 private:
  KvCacheShape shape_;
  std::vector<std::unique_ptr<DeviceBuffer>> buffers_;
  std::vector<KvLayerView> layers_;
};

}  // namespace tandem
