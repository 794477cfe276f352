#include "kernels/l2_prefetch.cuh"

#include <cstdint>

#include "kernels/kernel_utils.cuh"

namespace tandem::kernels {
namespace {

constexpr int kThreads = 128;
constexpr size_t kPieceBytes = size_t{1} << 16;  // one bulk prefetch per 64 KiB

// One CTA: each thread issues bulk L2 prefetches for its pieces, then waits for the kernels before
// it (the chain of programmatic launches relies on every such kernel waiting) and exits.
__global__ void __launch_bounds__(kThreads) L2PrefetchKernel(const L2PrefetchParams p) {
  AllowDependentLaunch();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const char* base = static_cast<const char*>(p.data);
  const size_t total = p.bytes & ~size_t{15};
  for (size_t offset = threadIdx.x * kPieceBytes; offset < total; offset += kThreads * kPieceBytes) {
    const size_t left = total - offset;
    const uint32_t size = static_cast<uint32_t>(left < kPieceBytes ? left : kPieceBytes);
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(base + offset), "r"(size) : "memory");
  }
#endif
  WaitForPrerequisiteGrids();
}

}  // namespace

cudaError_t LaunchL2Prefetch(const L2PrefetchParams& p, cudaStream_t stream) {
  if (reinterpret_cast<uintptr_t>(p.data) % 16 != 0) return cudaErrorInvalidValue;
  if (p.bytes < 16) return cudaSuccess;
  return LaunchKernel(p.programmatic, L2PrefetchKernel, dim3(1), dim3(kThreads), stream, p);
}

}  // namespace tandem::kernels
