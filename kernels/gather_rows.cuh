// out[r, :] = x[rows[r], :] for rows of `row_bytes` bytes (any dtype).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace tandem::kernels {

struct GatherRowsParams {
  const void* x = nullptr;
  const int32_t* rows = nullptr;  // device [num_rows], each a valid row of x
  void* out = nullptr;
  int32_t num_rows = 0;
  int64_t row_bytes = 0;
};

cudaError_t LaunchGatherRows(const GatherRowsParams& params, cudaStream_t stream);

}  // namespace tandem::kernels
