// Starts reading the first `bytes` of a buffer into L2 and returns without waiting for them
// (cp.async.bulk.prefetch.L2, sm_90+; a no-op on older devices): issued before a kernel that
// leaves HBM idle (decode attention at small batches), the weights of the GEMV after it stream in
// meanwhile. A hint: nothing is written, results do not change.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

namespace tandem::kernels {

struct L2PrefetchParams {
  const void* data = nullptr;  // 16-byte aligned
  size_t bytes = 0;            // rounded down to a multiple of 16
  bool programmatic = false;   // launch as a programmatic dependent (kernel_utils.cuh)
};

cudaError_t LaunchL2Prefetch(const L2PrefetchParams& params, cudaStream_t stream);

}  // namespace tandem::kernels
