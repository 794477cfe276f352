// Helper kernels of the GPU benchmarks only (no op of the engine): random fill and an HBM read
// probe. Launchers take a stream and return the launch's cudaGetLastError().
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace tandem::bench {

// n bf16 values uniform in [-scale, scale] from (seed, index): never zeros, so timings are not
// those of an all-zero input.
cudaError_t LaunchFillRandomBf16(__nv_bfloat16* data, size_t n, uint64_t seed, float scale,
                                 cudaStream_t stream);

// Reads `bytes` (a multiple of 16) from `data` with 16-byte loads across the whole GPU and writes
// one word per block to `sink` (so the loads are not dead). `sink` holds `blocks` words.
cudaError_t LaunchReadProbe(const void* data, size_t bytes, uint32_t* sink, int blocks,
                            cudaStream_t stream);

// Tensor-core rate probe: `blocks` CTAs of 8 warps, each warp `iters` x 8 independent bf16
// mma.sync.m16n8k16 (fp32 accumulate, 4096 FLOPs each); one float per thread to `sink`.
cudaError_t LaunchMmaRateProbe(int iters, int blocks, float* sink, cudaStream_t stream);
inline double MmaRateProbeFlops(int iters, int blocks) { return 4096.0 * 8 * 8 * iters * static_cast<double>(blocks); }

}  // namespace tandem::bench
