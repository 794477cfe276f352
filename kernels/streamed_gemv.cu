#include "kernels/streamed_gemv.cuh"

#include <algorithm>

#include "kernels/kernel_utils.cuh"
#include "kernels/tensor_core_utils.cuh"

namespace tandem::kernels {
namespace {

constexpr int kChunksPerLane = 4;                          // of a segment
constexpr int kSegChunks = 32 * kChunksPerLane;            // a segment: 128 chunks (2 KB) of one row
constexpr int kSegBytes = kSegChunks * 16;
// Ring bytes of a CTA of kWarps warps with kSlots slots each.
template <int kWarps, int kSlots>
__host__ __device__ constexpr size_t RingBytes() { return static_cast<size_t>(kWarps) * kSlots * kSegBytes; }
// A partial sum per segment and row of x, after the 192 KB ring, within the 227 KB a CTA may have
// on sm_90 (static shared memory: scale[] and a 32-float scratch). Every launch asks for the ring
// plus this much, so the kernel's shared-memory attribute never changes between launches.
constexpr size_t kMaxPartialBytes = 32 * 1024;

// The CTA's share: output rows n0, n0 + G, n0 + 2G, ... (G CTAs; n0 the CTA's index, so at any
// moment the CTAs read neighbouring rows) of each range (one range, or gate then up rows for
// kSiluMul), as a sequence of segments: range r, the CTA's row i, segment c of the row is segment
// (r * rows + i) * segs_per_row + c. Warp w takes segments w, w + kWarps, ...
struct Share {
  int64_t n0, rows;
  int32_t segs_per_row, range_segs, total_segs;
};

template <int kWarps>
__device__ __forceinline__ int32_t WarpSegments(const Share& s, int warp) {
  return s.total_segs > warp ? (s.total_segs - warp + kWarps - 1) / kWarps : 0;
}

// One lane's part of the warp's i-th segment into its ring slot, as one cp.async commit group
// (empty past the warp's last segment, so every lane counts the same groups).
template <int kRanges, int kWarps, int kSlots>
__device__ __forceinline__ void IssueSegment(const SmallMGemvParams& p, const Share& s, int warp, int lane, int32_t i,
                                             uint32_t ring, uint64_t policy) {
  if (i < WarpSegments<kWarps>(s, warp)) {
    const int32_t seg = warp + kWarps * i;
    const int32_t r = kRanges == 1 || seg < s.range_segs ? 0 : 1;  // gate rows, then up rows
    const int32_t local = seg - r * s.range_segs;
    const int32_t row = local / s.segs_per_row;
    const int32_t col_seg = local - row * s.segs_per_row;
    const __nv_bfloat16* src = p.weight + (r * p.n + s.n0 + static_cast<int64_t>(row) * gridDim.x) * p.k +
                               static_cast<int64_t>(col_seg) * kSegChunks * 8;
    const uint32_t dst = ring + (warp * kSlots + i % kSlots) * kSegBytes;
#pragma unroll
    for (int j = 0; j < kChunksPerLane; ++j) {
      CpAsync16(dst + (lane + 32 * j) * 16, src + (lane + 32 * j) * 8, true, policy);
    }
  }
  CpAsyncCommit();
}

// Thread 0's %globaltimer into the CTA's i-th trace stamp (SmallMGemvParams::trace).
__device__ __forceinline__ void TraceStamp(const SmallMGemvParams& p, int i) {
  if (p.trace != nullptr && threadIdx.x == 0) {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    p.trace[blockIdx.x * kStreamedGemvTraceStamps + i] = t;
  }
}

// Floats of the partial sums before the staged x (16-byte aligned).
__host__ __device__ inline int64_t PartialFloatsAligned(int64_t total_segs, int64_t m) { return (total_segs * m + 3) / 4 * 4; }

// kStageX (one row of x): x, times the norm weight with kNorm, as fp32 after the partial sums, the
// first 4 values of each 8-value chunk in one array and the last 4 in another (a lane's float4
// reads of consecutive chunks are then consecutive: no bank conflicts). The dot product becomes
// w . (x * g) instead of (w * g) . x: the same terms, one rounding moved.
template <int kWarps, int kSlots, int kM, bool kNorm, SmallMGemvEpilogue kEpilogue, typename Out, bool kStageX>
__global__ void __launch_bounds__(kWarps * 32, 1) StreamedGemvKernel(const SmallMGemvParams p) {
  static_assert(!kStageX || kM == 1);
  constexpr int kThreads = kWarps * 32;
  constexpr size_t kRingBytes = RingBytes<kWarps, kSlots>();
  constexpr bool kSilu = kEpilogue == SmallMGemvEpilogue::kSiluMul;
  constexpr int kRanges = kSilu ? 2 : 1;
  extern __shared__ __align__(128) unsigned char smem[];
  float* partials = reinterpret_cast<float*>(smem + kRingBytes);  // [total_segs][kM]
  __shared__ float scale[kM];
  __shared__ float scratch[32];
  AllowDependentLaunch();
  TraceStamp(p, 0);

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  Share s;
  s.n0 = blockIdx.x;
  s.rows = (p.n - s.n0 + gridDim.x - 1) / gridDim.x;
  s.segs_per_row = static_cast<int32_t>(p.k / (8 * kSegChunks));
  s.range_segs = static_cast<int32_t>(s.rows) * s.segs_per_row;
  s.total_segs = kRanges * s.range_segs;
  const uint32_t ring = SmemAddr(smem);
  const uint64_t policy = L2EvictFirstPolicy();  // every weight byte is read once
  // The first segments: immutable weights, requested while the kernel before may still run. The
  // loads after the wait (the residual, x) queue behind them: with a share of at most 4 segments a
  // warp (the o projection's 4096 x 4096) 2 slots before the wait and the third after x (measured
  // on an H100: 12.3 us back to back against 13.4 with 3), else the whole ring (qkv: 17.5 against 17.9).
  const int prewait = p.streamed_prewait_segments >= 0 ? min(p.streamed_prewait_segments, kSlots)
                      : WarpSegments<kWarps>(s, 0) <= 4 ? 2 : kSlots;
  for (int32_t i = 0; i < prewait; ++i) IssueSegment<kRanges, kWarps, kSlots>(p, s, warp, lane, i, ring, policy);
  WaitForPrerequisiteGrids();
  TraceStamp(p, 1);
  // kAddToOut: the residual of the warp's first kResidualRows rows, read now rather than behind the
  // whole weight stream at the end.
  constexpr int kResidualRows = 2;
  [[maybe_unused]] __nv_bfloat16 residual[kResidualRows][kM];
  if constexpr (kEpilogue == SmallMGemvEpilogue::kAddToOut) {
#pragma unroll
    for (int j = 0; j < kResidualRows; ++j) {
      const int64_t row = warp + j * kWarps;
#pragma unroll
      for (int m = 0; m < kM; ++m) {
        residual[j][m] = lane == 0 && row < s.rows
                             ? static_cast<const __nv_bfloat16*>(p.out)[m * p.n + s.n0 + row * gridDim.x]
                             : __float2bfloat16_rn(0.0f);
      }
    }
  }

  const uint4* x = reinterpret_cast<const uint4*>(p.x);
  const uint4* g = reinterpret_cast<const uint4*>(p.norm_weight);
  const int64_t chunks_per_row = p.k / 8;
  float4* xs_lo = reinterpret_cast<float4*>(partials + PartialFloatsAligned(s.total_segs, kM));  // kStageX
  float4* xs_hi = xs_lo + chunks_per_row;
  if constexpr (kStageX) {
    float sum_sq = 0.0f;
    for (int64_t c = threadIdx.x; c < chunks_per_row; c += kThreads) {
      float xf[8];
      Bf16x8ToFloat(__ldg(x + c), xf);
      if constexpr (kNorm) {
        float gf[8];
        Bf16x8ToFloat(__ldg(g + c), gf);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          sum_sq = fmaf(xf[i], xf[i], sum_sq);
          xf[i] *= gf[i];
        }
      }
      xs_lo[c] = make_float4(xf[0], xf[1], xf[2], xf[3]);
      xs_hi[c] = make_float4(xf[4], xf[5], xf[6], xf[7]);
    }
    if constexpr (kNorm) {
      sum_sq = BlockSum(sum_sq, scratch);  // also orders the staging before every read of it
    } else {
      __syncthreads();
    }
    if (threadIdx.x == 0) scale[0] = kNorm ? rsqrtf(sum_sq / static_cast<float>(p.k) + p.eps) : 1.0f;
  } else {
    // 1 / rms of each row of x (the norm prologue), over the whole row.
#pragma unroll
    for (int m = 0; m < kM; ++m) {
      float sum_sq = 0.0f;
      if constexpr (kNorm) {
        for (int64_t c = threadIdx.x; c < chunks_per_row; c += kThreads) {
          float xf[8];
          Bf16x8ToFloat(__ldg(x + m * chunks_per_row + c), xf);
#pragma unroll
          for (int i = 0; i < 8; ++i) sum_sq = fmaf(xf[i], xf[i], sum_sq);
        }
        sum_sq = BlockSum(sum_sq, scratch);
      }
      if (threadIdx.x == 0) scale[m] = kNorm ? rsqrtf(sum_sq / static_cast<float>(p.k) + p.eps) : 1.0f;
    }
  }
  // The rest of the ring.
  for (int32_t i = prewait; i < kSlots; ++i) IssueSegment<kRanges, kWarps, kSlots>(p, s, warp, lane, i, ring, policy);

  // Each segment: 4 chunks per lane, one reduction, one partial sum per row of x. A warp keeps
  // kSlots segments in flight: segment i is read out of its slot into registers, and the slot
  // refilled with segment i + kSlots, before the arithmetic on segment i.
  TraceStamp(p, 2);
  const int32_t count = WarpSegments<kWarps>(s, warp);
  for (int32_t i = 0; i < count; ++i) {
    CpAsyncWait<kSlots - 1>();  // this lane's part of segment i has landed
    __syncwarp();               // ... and every lane's
    const int32_t seg = warp + kWarps * i;
    const int32_t col_seg = seg % s.segs_per_row;  // range_segs is a multiple of segs_per_row
    const uint4* slot = reinterpret_cast<const uint4*>(smem + (warp * kSlots + i % kSlots) * kSegBytes);
    uint4 wraw[kChunksPerLane];
#pragma unroll
    for (int j = 0; j < kChunksPerLane; ++j) wraw[j] = slot[lane + 32 * j];
    __syncwarp();  // every lane has read the slot before it is refilled
    IssueSegment<kRanges, kWarps, kSlots>(p, s, warp, lane, i + kSlots, ring, policy);
    float acc[kM];
#pragma unroll
    for (int m = 0; m < kM; ++m) acc[m] = 0.0f;
#pragma unroll
    for (int j = 0; j < kChunksPerLane; ++j) {
      const int64_t c = static_cast<int64_t>(col_seg) * kSegChunks + lane + 32 * j;  // chunk of the row, of x
      float wf[8];
      Bf16x8ToFloat(wraw[j], wf);
      if constexpr (kStageX) {
        const float4 lo = xs_lo[c], hi = xs_hi[c];
        acc[0] = fmaf(wf[0], lo.x, acc[0]);
        acc[0] = fmaf(wf[1], lo.y, acc[0]);
        acc[0] = fmaf(wf[2], lo.z, acc[0]);
        acc[0] = fmaf(wf[3], lo.w, acc[0]);
        acc[0] = fmaf(wf[4], hi.x, acc[0]);
        acc[0] = fmaf(wf[5], hi.y, acc[0]);
        acc[0] = fmaf(wf[6], hi.z, acc[0]);
        acc[0] = fmaf(wf[7], hi.w, acc[0]);
      } else {
        if constexpr (kNorm) {
          // (x * inv_rms * g) . w == inv_rms * (x . (w * g)): scale the weights, inv_rms at the end.
          float gf[8];
          Bf16x8ToFloat(__ldg(g + c), gf);
#pragma unroll
          for (int e = 0; e < 8; ++e) wf[e] *= gf[e];
        }
#pragma unroll
        for (int m = 0; m < kM; ++m) {
          float xf[8];
          Bf16x8ToFloat(__ldg(x + m * chunks_per_row + c), xf);
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[m] = fmaf(wf[e], xf[e], acc[m]);
        }
      }
    }
#pragma unroll
    for (int m = 0; m < kM; ++m) {
      acc[m] = WarpSum(acc[m]);
      if (lane == 0) partials[seg * kM + m] = acc[m];
    }
  }
  __syncthreads();  // every segment's partial sums and scale[] are in
  TraceStamp(p, 3);

  // Each output row: its segments summed in order (a fixed order: the result does not depend on
  // timing), then the epilogue.
  for (int64_t row = warp, j = 0; row < s.rows; row += kWarps, ++j) {
    const int64_t n = s.n0 + row * gridDim.x;
    float v[kRanges][kM];
#pragma unroll
    for (int r = 0; r < kRanges; ++r) {
#pragma unroll
      for (int m = 0; m < kM; ++m) {
        const int32_t first = r * s.range_segs + static_cast<int32_t>(row) * s.segs_per_row;
        float a = 0.0f;
        for (int32_t t = lane; t < s.segs_per_row; t += 32) a += partials[(first + t) * kM + m];
        v[r][m] = WarpSum(a) * scale[m] + (p.bias != nullptr ? __bfloat162float(p.bias[r * p.n + n]) : 0.0f);
      }
    }
    if (lane != 0) continue;
#pragma unroll
    for (int m = 0; m < kM; ++m) {
      Out* out = static_cast<Out*>(p.out) + m * p.n + n;
      if constexpr (kSilu) {
        const float gv = v[0][m];
        *out = __float2bfloat16_rn(gv / (1.0f + __expf(-gv)) * v[kRanges - 1][m]);
      } else if constexpr (kEpilogue == SmallMGemvEpilogue::kAddToOut) {
        const __nv_bfloat16 old = j == 0 ? residual[0][m] : j == 1 ? residual[1][m] : *out;
        *out = __float2bfloat16_rn(v[0][m] + __bfloat162float(old));
      } else if constexpr (sizeof(Out) == 4) {
        *out = v[0][m];
      } else {
        *out = __float2bfloat16_rn(v[0][m]);
      }
    }
  }
  TraceStamp(p, 4);
}

// Segments of a CTA's share (Share::total_segs, host side) in a grid of `ctas` CTAs.
int64_t CtaSegments(const SmallMGemvParams& p, int64_t ctas) {
  const int64_t ranges = p.epilogue == SmallMGemvEpilogue::kSiluMul ? 2 : 1;
  return ranges * ((p.n + ctas - 1) / ctas) * (p.k / (8 * kSegChunks));
}

// Whether the launch stages x (see StreamedGemvKernel): one row, asked for, and room after the
// partial sums within kMaxPartialBytes.
bool StagesX(const SmallMGemvParams& p, unsigned int ctas) {
  return p.streamed_stage_x && p.m == 1 &&
         static_cast<size_t>(PartialFloatsAligned(CtaSegments(p, ctas), 1) + p.k) * sizeof(float) <= kMaxPartialBytes;
}

template <int kM, bool kNorm, SmallMGemvEpilogue kEpilogue, typename Out>
cudaError_t LaunchInstance(const SmallMGemvParams& p, unsigned int ctas, cudaStream_t stream) {
  static_assert(RingBytes<32, 3>() + kMaxPartialBytes + 1024 <= 227 * 1024);
  static_assert(RingBytes<16, 6>() + kMaxPartialBytes + 1024 <= 227 * 1024);
  auto launch = [&](auto* kernel, int warps, size_t ring_bytes) {
    return LaunchKernelWithSmem(p.programmatic, kernel, dim3(ctas), dim3(warps * 32), ring_bytes + kMaxPartialBytes,
                                stream, p);
  };
  // One row of x: 32 warps x 3 slots (measured best of 8 x 6, 16 x 3, 16 x 6, 24 x 4 and 32 x 3 on an
  // H100); more rows need more registers than 1024 threads leave: 16 x 6.
  if constexpr (kM == 1) {
    if (StagesX(p, ctas)) return launch(StreamedGemvKernel<32, 3, kM, kNorm, kEpilogue, Out, true>, 32, RingBytes<32, 3>());
    return launch(StreamedGemvKernel<32, 3, kM, kNorm, kEpilogue, Out, false>, 32, RingBytes<32, 3>());
  } else {
    return launch(StreamedGemvKernel<16, 6, kM, kNorm, kEpilogue, Out, false>, 16, RingBytes<16, 6>());
  }
}

template <int kM>
cudaError_t LaunchRows(const SmallMGemvParams& p, unsigned int ctas, cudaStream_t stream) {
  const bool norm = p.norm_weight != nullptr;
  using E = SmallMGemvEpilogue;
  switch (p.epilogue) {
    case E::kStore:
      if (p.out_is_f32) {
        return norm ? LaunchInstance<kM, true, E::kStore, float>(p, ctas, stream)
                    : LaunchInstance<kM, false, E::kStore, float>(p, ctas, stream);
      }
      return norm ? LaunchInstance<kM, true, E::kStore, __nv_bfloat16>(p, ctas, stream)
                  : LaunchInstance<kM, false, E::kStore, __nv_bfloat16>(p, ctas, stream);
    case E::kAddToOut: return LaunchInstance<kM, false, E::kAddToOut, __nv_bfloat16>(p, ctas, stream);
    case E::kSiluMul: return LaunchInstance<kM, true, E::kSiluMul, __nv_bfloat16>(p, ctas, stream);
  }
  return cudaErrorInvalidValue;
}

int64_t Ctas(const SmallMGemvParams& p, int num_sms) { return std::min<int64_t>(num_sms > 0 ? num_sms : 132, p.n); }

size_t PartialBytes(const SmallMGemvParams& p, int num_sms) {
  return static_cast<size_t>(CtaSegments(p, Ctas(p, num_sms))) * p.m * sizeof(float);
}

}  // namespace

bool StreamedGemvSupports(const SmallMGemvParams& p, int num_sms) {
  return SmallMGemvParamsValid(p) && p.k % (8 * kSegChunks) == 0 && p.n >= 1 &&
         PartialBytes(p, num_sms) <= kMaxPartialBytes;
}

cudaError_t LaunchStreamedGemv(const SmallMGemvParams& p, cudaStream_t stream) {
  if (!StreamedGemvSupports(p, p.num_sms)) return cudaErrorInvalidValue;
  const auto grid = static_cast<unsigned int>(Ctas(p, p.num_sms));
  switch (p.m) {
    case 1: return LaunchRows<1>(p, grid, stream);
    case 2: return LaunchRows<2>(p, grid, stream);
    case 3: return LaunchRows<3>(p, grid, stream);
    default: return LaunchRows<4>(p, grid, stream);
  }
}

}  // namespace tandem::kernels
