// KvHandoff: the KV cache of one request on its way from a prefill worker to a decode worker, in
// host memory, plus what the decode worker needs to go on (the first token). Plain data: the
// prefill engine fills it (Engine::ReadKvForTransfer), a KvTransport moves it, the decode engine
// writes it into blocks it reserved (Engine::CompleteTransfer). Sender and receiver block ids are
// independent: only the block order (token order) travels.
//
// Layout of `data` (Backend::GatherKvBlocks): [num_layers][K|V][num_blocks][num_kv_heads]
// [block_size][head_dim]; layer l is the contiguous chunk [l * LayerBytes(), (l + 1) * LayerBytes()).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tandem/dtype.h"
#include "tandem/types.h"

namespace tandem {

// Geometry of a paged KV cache; two workers can hand KV over only if theirs are equal.
struct KvGeometry {
  int32_t num_layers = 0;
  int32_t block_size = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  DType dtype = DType::kF32;

  // Bytes of one block of one layer's K (or V).
  size_t BlockBytes() const {
    return static_cast<size_t>(num_kv_heads) * block_size * head_dim * DTypeSize(dtype);
  }
  bool operator==(const KvGeometry&) const = default;
  std::string ToString() const {
    return std::to_string(num_layers) + " layers x " + std::to_string(num_kv_heads) + " kv heads x " +
           std::to_string(block_size) + " tokens/block x head dim " + std::to_string(head_dim) + " (" +
           std::string(DTypeName(dtype)) + ")";
  }
};

struct KvHandoff {
  std::string request_id;
  KvGeometry geometry;
  int32_t num_tokens = 0;   // tokens whose KV `data` holds: the prompt
  int32_t num_blocks = 0;   // blocks in `data`: ceil(num_tokens / block_size)
  TokenId first_token = 0;  // sampled by the prefill worker; its KV is computed by the decode worker
  std::vector<std::byte> data;
  // Prefill side: the KV went out through a KvStreamer while the prefill ran; `data` is empty and
  // KvTransport::Send only waits for the receiver's verdict.
  bool streamed = false;
  // Receive side of a device transport: the KV (TotalBytes(), the layout above) is in the
  // receiving backend's memory, valid until the handler returns; `data` is empty.
  const void* device_data = nullptr;

  size_t LayerBytes() const { return 2 * static_cast<size_t>(num_blocks) * geometry.BlockBytes(); }
  size_t TotalBytes() const { return static_cast<size_t>(geometry.num_layers) * LayerBytes(); }
};

}  // namespace tandem
