#include "kv/kv_cache.h"

namespace tandem {

int64_t KvCacheShape::BytesPerBlock() const {
  return 2LL * num_layers * num_kv_heads * block_size * head_dim *
         static_cast<int64_t>(DTypeSize(dtype));
}

StatusOr<std::unique_ptr<KvCache>> KvCache::Create(Backend& backend, const KvCacheShape& shape) {
  if (shape.num_blocks <= 0 || shape.block_size <= 0) {
    return InvalidArgumentError("KV cache needs at least one block of at least one token");
  }
  auto cache = std::unique_ptr<KvCache>(new KvCache());
  cache->shape_ = shape;
  for (int32_t l = 0; l < shape.num_layers; ++l) {
    KvLayerView view;
    for (Tensor* t : {&view.k, &view.v}) {
      *t = Tensor(nullptr, shape.dtype, {shape.num_blocks, shape.num_kv_heads, shape.block_size, shape.head_dim});
      TANDEM_ASSIGN_OR_RETURN(auto buffer, backend.Allocate(t->nbytes()));
      t->data = buffer->data();
      cache->buffers_.push_back(std::move(buffer));
    }
    cache->layers_.push_back(view);
  }
  return cache;
}

}  // namespace tandem
