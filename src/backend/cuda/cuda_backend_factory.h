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
  // Small decode batches (<= 4 rows): RMSNorm, SiLU·mul and the residual add fused into the
  // small-M GEMV (Backend::FusesSmallBatch); off: one kernel per op, as for larger batches.
  bool fuse_small_batch = true;
  // Programmatic dependent launch (Hopper and newer) of the GEMV and RoPE kernels: each may start
  // while the kernel before it drains (kernels/kernel_utils.cuh). Off: plain stream order.
  bool programmatic_launch = true;
  // Output columns per warp of the small-M GEMV: 1 or 2; 0 lets the kernel pick (benchmarks).
  int small_m_gemv_columns_per_warp = 0;
  // Prefill attention through the wgmma kernel (kernels/paged_prefill_attention_wgmma.cuh) on
  // devices of compute capability 9.0 for the shapes it supports; off (or elsewhere): the mma.sync
  // kernel (kernels/paged_prefill_attention.cuh), the "before" of benchmarks and tests.
  bool wgmma_prefill_attention = true;
};

// Selects `device`, creates the backend's stream and cuBLAS handle. InvalidArgument for a device
// ordinal that does not exist or a utilization outside (0, 1]; Unavailable when no CUDA device or
// driver is usable.
StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(const CudaBackendOptions& options);

}  // namespace tandem
