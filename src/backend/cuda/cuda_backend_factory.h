// Creating the CUDA backend. The only header of the backend the rest of Tandem includes (under
// #ifdef TANDEM_WITH_CUDA); the class itself stays in cuda_backend.h.
#pragma once

#include <memory>

#include "backend/backend.h"
#include "tandem/status.h"

namespace tandem {

struct CudaBackendOptions {
  int device = 0;
  double gpu_memory_utilization = 0.9;
  // Benchmarks only: decode attention through the CUDA-core split-KV kernel with its split policy
  // (kernels::PagedDecodeKernel::kCudaCore), the "before" of the tensor-core kernel.
  bool cuda_core_decode_attention = false;
};

// Selects `device`, creates the backend's stream and cuBLAS handle. InvalidArgument for a device
// ordinal that does not exist or a utilization outside (0, 1]; Unavailable when no CUDA device or
// driver is usable.
StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(const CudaBackendOptions& options);

}  // namespace tandem
