#include "kernels/gather_rows.cuh"

#include "kernels/kernel_utils.cuh"

namespace tandem::kernels {
namespace {

// One block per output row, copying words of type W.
template <typename W>
__global__ void GatherRowsKernel(GatherRowsParams p) {
  const int64_t r = blockIdx.x;
  const int64_t n = p.row_bytes / static_cast<int64_t>(sizeof(W));
  const W* src = reinterpret_cast<const W*>(static_cast<const char*>(p.x) + p.rows[r] * p.row_bytes);
  W* dst = reinterpret_cast<W*>(static_cast<char*>(p.out) + r * p.row_bytes);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
}

}  // namespace

cudaError_t LaunchGatherRows(const GatherRowsParams& p, cudaStream_t stream) {
  if (p.num_rows == 0) return cudaSuccess;
  const uintptr_t align = reinterpret_cast<uintptr_t>(p.x) | reinterpret_cast<uintptr_t>(p.out) |
                          static_cast<uintptr_t>(p.row_bytes);
  if (align % 16 == 0) {
    GatherRowsKernel<uint4><<<p.num_rows, 128, 0, stream>>>(p);
  } else if (align % 4 == 0) {
    GatherRowsKernel<uint32_t><<<p.num_rows, 128, 0, stream>>>(p);
  } else {
    GatherRowsKernel<unsigned char><<<p.num_rows, 128, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace tandem::kernels
