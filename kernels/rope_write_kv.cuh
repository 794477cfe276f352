// Rotary embedding (HF rotate_half: pairs (i, i + rotary_dim / 2) of the first rotary_dim dims)
// fused with writing the paged KV cache: reads the fused projection qkv (per token q | k | v),
// writes rotated q to q_out and rotated k and v into the cache
// [num_blocks, num_kv_heads, block_size, head_dim] at slot_mapping (a negative slot: not written).
// fp32 math; cos/sin are the f32 tables the model computed once.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace tandem::kernels {

struct RopeWriteKvParams {
  const __nv_bfloat16* qkv = nullptr;  // [num_tokens, (num_heads + 2 * num_kv_heads) * head_dim]
  __nv_bfloat16* q_out = nullptr;      // [num_tokens, num_heads * head_dim]
  __nv_bfloat16* k_cache = nullptr;
  __nv_bfloat16* v_cache = nullptr;
  const float* cos = nullptr;        // [max_positions, rotary_dim / 2]
  const float* sin = nullptr;
  const int32_t* positions = nullptr;     // device [num_tokens], each < max_positions
  const int64_t* slot_mapping = nullptr;  // device [num_tokens]
  int32_t num_tokens = 0;
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t rotary_dim = 0;
  int32_t block_size = 0;
  bool programmatic = false;  // launch as a programmatic dependent (sm_90+; kernel_utils.cuh)
};

cudaError_t LaunchRopeWriteKv(const RopeWriteKvParams& params, cudaStream_t stream);

}  // namespace tandem::kernels
