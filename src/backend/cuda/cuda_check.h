// Turning CUDA runtime and cuBLAS results into Status. Every CUDA and cuBLAS call of the backend goes
// through one of these macros; a kernel launcher returns the cudaGetLastError() of its launch.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <string>
#include <string_view>

#include "tandem/status.h"

namespace tandem {

// INTERNAL (or RESOURCE_EXHAUSTED for out-of-memory) with the CUDA error name and string.
inline Status CudaErrorToStatus(cudaError_t err, std::string_view what) {
  if (err == cudaSuccess) return OkStatus();
  std::string msg = std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  if (err == cudaErrorMemoryAllocation) return ResourceExhaustedError(std::move(msg));
  return InternalError(std::move(msg));
}

inline Status CublasErrorToStatus(cublasStatus_t st, std::string_view what) {
  if (st == CUBLAS_STATUS_SUCCESS) return OkStatus();
  std::string msg = std::string(what) + ": " + cublasGetStatusName(st) + " (" + cublasGetStatusString(st) + ")";
  if (st == CUBLAS_STATUS_ALLOC_FAILED) return ResourceExhaustedError(std::move(msg));
  return InternalError(std::move(msg));
}

}  // namespace tandem

// Returns a Status naming the failed expression when a CUDA runtime call fails.
#define TANDEM_CUDA_RETURN_IF_ERROR(expr) \
  TANDEM_RETURN_IF_ERROR(::tandem::CudaErrorToStatus((expr), #expr))
#define TANDEM_CUBLAS_RETURN_IF_ERROR(expr) \
  TANDEM_RETURN_IF_ERROR(::tandem::CublasErrorToStatus((expr), #expr))
