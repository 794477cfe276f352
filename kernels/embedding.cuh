// Embedding gather: out[t, :] = table[ids[t], :] (bf16).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace tandem::kernels {

struct EmbeddingParams {
  const int32_t* ids = nullptr;        // device [num_tokens], each in [0, vocab)
  const __nv_bfloat16* table = nullptr;  // [vocab, hidden]
  __nv_bfloat16* out = nullptr;          // [num_tokens, hidden]
  int32_t num_tokens = 0;
  int64_t hidden = 0;
};

cudaError_t LaunchEmbedding(const EmbeddingParams& params, cudaStream_t stream);

}  // namespace tandem::kernels
