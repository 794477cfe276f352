// Creating the CUDA backend. The only header of the backend the rest of Tandem includes (under
// #ifdef TANDEM_WITH_CUDA); the class itself stays in cuda_backend.h.
#pragma once

#include <cstdint>
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
  // Small-M GEMVs of at most this many rows stream their weights through shared memory, one CTA
  // and an equal share of rows per SM (kernels/streamed_gemv.cuh), where the shape allows: batch-1
  // decode by default (measured faster there); 0: never; 4: every small batch (tests). Hopper and
  // newer only (the kernel's 224 KB of shared memory per CTA).
  int64_t small_m_gemv_streamed_max_rows = 1;
  // The streamed GEMV of one row stages x (times the norm weight) in shared memory as fp32 where it
  // fits (kernels/streamed_gemv.cuh); off: x and the norm weight are read per 16-byte chunk.
  bool small_m_gemv_streamed_stage_x = true;
  // Ring slots (of 3) each warp of the streamed GEMV fills before its programmatic wait, 0..3; the
  // rest after it has read x (and the residual), which would otherwise queue behind them. -1: by
  // shape (kernels/small_m_gemv.cuh).
  int small_m_gemv_streamed_prewait_segments = -1;
  // Split-KV decode attention of small decode batches (<= 4 sequences, the small-M GEMV's rows;
  // kernels/paged_decode_attention.cuh). Both on by default (measured together: batch-1 decode
  // steps 0.03-0.07 ms faster on an H100 with the RoPE-fused attention, benchmarks/RESULTS.md):
  // - programmatic_decode_attention: the attention kernel (and its combine kernel) launch as
  //   programmatic dependents, loading tables, positions and the K/V before the query's own key
  //   while RoPE drains. Needs programmatic_launch (and Hopper); off: plain launches.
  bool programmatic_decode_attention = true;
  // - decode_attention_combines_in_kernel: with several key splits, the last split CTA of each
  //   (sequence, KV head) combines the partial states; no combine kernel.
  bool decode_attention_combines_in_kernel = true;
  // Decode-only batches whose head the tensor-core split-KV kernel holds and rotates whole: RoPE
  // and the KV write fused into the attention kernel (Backend::RopeWriteKvAttention); the new key
  // is attended from shared memory, so no load waits on the write. Off: the RoPE kernel, then
  // attention.
  bool fuse_rope_decode_attention = true;
  // The fewest keys a split-KV decode attention split takes (a multiple of 16, 16..4096): more
  // keys per split, fewer CTAs and partial states to combine for short contexts and small batches.
  int decode_attention_min_split_keys = 128;
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
