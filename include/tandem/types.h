// Basic identifiers shared by every module.
#pragma once

#include <cstdint>

namespace tandem {

using TokenId = int32_t;   // index into the model's vocabulary
using BlockId = int32_t;   // index of a KV-cache block within one worker's pool
using SeqId = int64_t;     // engine-assigned id of a Sequence, unique within one engine

}  // namespace tandem
