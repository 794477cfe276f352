// The small-M GEMV (kernels/small_m_gemv.cuh: same params, epilogues and fused prologue) with the
// weights streamed through shared memory (cp.async) instead of through registers.
//
// Why: the register kernel keeps 4 KB per warp in flight, and its grid is whole warps of rows, so
// a GEMV ends in a tail where part of the SMs have no rows left. Decode GEMVs of the Llama-8B
// shape measured 71-87% of the read bandwidth back to back (the LM head, 15 waves, 100%).
// Here each SM gets one CTA and every G-th row (G CTAs, one per SM: equal shares within a row, and
// at any moment the CTAs read neighbouring rows), streamed in 2 KB segments of one row: warp w of
// 32 (16 for more rows of x) takes segments w, w + 32, ... through its own ring of 3 slots (6)
// with cp.async: 192 KB of rings per CTA, all of it in flight (a segment is read out of its slot
// into registers and the slot refilled before the arithmetic), no barrier between warps; each lane 4
// chunks per segment, the warp one reduction. All CTAs end together, and the first segments are
// requested before the programmatic wait (the weights are immutable).
// A segment's partial sums stay in shared memory; at the end each row sums its segments in a fixed
// order, so the result does not depend on timing (graph replay and eager launches agree bit for bit).
// One row of x (SmallMGemvParams::streamed_stage_x, where it fits beside the partial sums: k up to
// ~7k) is staged once per CTA in shared memory as fp32, times the norm weight with a norm
// prologue, so a 16-byte weight chunk costs one shared-memory read pair and 8 FMAs instead of two
// L1 loads, 16 conversions and 8 multiplies (ncu, session 5: the gate|up GEMV at 59% SM throughput,
// 11.7 cycles per issued instruction, DRAM 76% of peak at base clocks).
//
// The residual of kAddToOut is read right after the programmatic wait, and a GEMV of at most 4
// segments a warp fills only 2 of its 3 slots before the wait (the rest after x is staged): loads
// issued after the wait queue behind the ones issued before it (measured with
// SmallMGemvParams::trace: 2-3.7 us of tail for the residual read at the end, 5.4 us from the wait
// to x staged behind a full ring).
//
// Measured (H100, 2026-11-27; benchmarks/RESULTS.md): back to back with PDL, 89 / 95 / 90 / 97 /
// 96% of the read bandwidth for the Llama-8B q / qkv / o / gate|up / down GEMVs (register kernel
// 75 / 71 / 73 / 95 / 83%); session 4's layouts before x was staged: 8 warps x 6 slots 77 / 76 /
// 65 / 86 / 73%, 16 x 6 79 / 83 / 67 / 90 / 94%; session 6, 16 warps x 3 slots (room for the next
// kernel's CTA beside it): slower in the decode step.
// Tried first: 16 KB stages consumed by all warps of the CTA with a barrier per
// stage and a reduction per 512 bytes, loaded by one thread's bulk copies (cp.async.bulk, mbarrier)
// or by every thread's cp.async: 35-54% of the read bandwidth, limited by instructions issued (~125
// per 16 bytes; ncu: DRAM 34% busy, 10 cycles between a warp's instructions), not by memory.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/small_m_gemv.cuh"

namespace tandem::kernels {

// Whether the streamed kernel takes this GEMV: SmallMGemvParamsValid, k a multiple of 1024 (whole
// 2 KB segments per row), and the partial sums (one per segment and row of x) within 32 KB. Needs
// a device with 227 KB of shared memory per CTA (sm_90): CudaBackend enables it there only.
bool StreamedGemvSupports(const SmallMGemvParams& params, int num_sms);

// cudaErrorInvalidValue for a GEMV StreamedGemvSupports refuses; else as LaunchSmallMGemv.
// Uses params.programmatic, num_sms (0: 132) and streamed_stage_x; ignores columns_per_warp.
cudaError_t LaunchStreamedGemv(const SmallMGemvParams& params, cudaStream_t stream);

}  // namespace tandem::kernels
