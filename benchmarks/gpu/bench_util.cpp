#include "benchmarks/gpu/bench_util.h"

#include <cuda_bf16.h>

#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "benchmarks/gpu/bench_kernels.cuh"

namespace tandem::bench {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

EventTimer::~EventTimer() {
  if (start_) (void)cudaEventDestroy(start_);
  if (stop_) (void)cudaEventDestroy(stop_);
}

Status EventTimer::Init() {
  TANDEM_CUDA_RETURN_IF_ERROR(cudaEventCreate(&start_));
  TANDEM_CUDA_RETURN_IF_ERROR(cudaEventCreate(&stop_));
  return OkStatus();
}

Status EventTimer::Start(cudaStream_t s) {
  TANDEM_CUDA_RETURN_IF_ERROR(cudaEventRecord(start_, s));
  return OkStatus();
}

StatusOr<double> EventTimer::Stop(cudaStream_t s) {
  TANDEM_CUDA_RETURN_IF_ERROR(cudaEventRecord(stop_, s));
  TANDEM_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(stop_));
  float ms = 0;
  TANDEM_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, start_, stop_));
  return ms * 1e-3;
}

StatusOr<DeviceMem> AllocRandom(Backend& backend, cudaStream_t stream, size_t elems, uint64_t seed, float scale) {
  DeviceMem m;
  TANDEM_ASSIGN_OR_RETURN(m.buffer, backend.Allocate(elems * 2));
  TANDEM_CUDA_RETURN_IF_ERROR(LaunchFillRandomBf16(static_cast<__nv_bfloat16*>(m.data()), elems, seed, scale, stream));
  return m;
}

}  // namespace tandem::bench
