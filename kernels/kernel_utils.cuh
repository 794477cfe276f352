// Device helpers shared by the kernels of kernels/*.cu (no op of its own). Included by .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <utility>

namespace tandem::kernels {

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The 8 bf16 of a 16-byte load as floats.
__device__ __forceinline__ void Bf16x8ToFloat(const uint4& raw, float (&f)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the sum.
// `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int num_warps = blockDim.x >> 5;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = lane < num_warps ? scratch[lane] : 0.0f;
  return WarpSum(total);
}

// Programmatic dependent launch (PDL, sm_90+). A kernel launched with LaunchKernel(programmatic =
// true) may start while the kernel before it on the stream still runs: it must call
// WaitForPrerequisiteGrids() before reading anything an earlier kernel wrote and before writing any
// global memory (an earlier kernel may still read it). Only then does "this kernel finished" imply
// "every earlier kernel finished", which the next programmatic dependent relies on. Without the
// launch attribute both calls are no-ops, so the same kernel serves both launches.
__device__ __forceinline__ void WaitForPrerequisiteGrids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next programmatic dependent on the stream launch once every CTA of this kernel called
// it (or exited); its CTAs then take free SM slots and run up to their own wait.
__device__ __forceinline__ void AllowDependentLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Launches kernel<<<grid, block, smem_bytes, stream>>>(args...), as a programmatic dependent when
// asked; past the default 48 KB of dynamic shared memory it first raises the kernel's limit.
template <typename... Params, typename... Args>
cudaError_t LaunchKernelWithSmem(bool programmatic, void (*kernel)(Params...), dim3 grid, dim3 block,
                                 size_t smem_bytes, cudaStream_t stream, Args&&... args) {
  if (smem_bytes > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_bytes));
    if (err != cudaSuccess) return err;
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = programmatic ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

// Launches kernel<<<grid, block, 0, stream>>>(args...), as a programmatic dependent when asked.
template <typename... Params, typename... Args>
cudaError_t LaunchKernel(bool programmatic, void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
                         Args&&... args) {
  return LaunchKernelWithSmem(programmatic, kernel, grid, block, 0, stream, std::forward<Args>(args)...);
}

inline unsigned int CeilDiv(long long a, long long b) { return static_cast<unsigned int>((a + b - 1) / b); }

}  // namespace tandem::kernels
