#include "kernels/paged_decode_attention.cuh"

#include <algorithm>

#include "kernels/kernel_utils.cuh"
#include "kernels/tensor_core_utils.cuh"

namespace tandem::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr float kLog2e = 1.4426950408889634f;
constexpr int kTileKeys = 16;   // keys per tensor-core tile, and the granularity of a split
constexpr int kMaxSplits = 64;
constexpr int kCtasPerSm = 2;   // resident tensor-core CTAs per SM: the split policy's slots
// A split's partial state of one query head: kD accumulators, m, l and two floats of padding, so
// every record starts 16-byte aligned (the combine reads it in float4s).
__host__ __device__ constexpr int PartStride(int head_dim) { return head_dim + 4; }

// exp2(m - m_ref), 0 for an empty state (m = -inf).
__device__ __forceinline__ float Rescale(float m, float m_ref) { return m == -INFINITY ? 0.0f : exp2f(m - m_ref); }

// How a sequence's keys split: keys [first, pos] in splits of split_len (at least
// p.min_split_keys, in whole tiles), so the grid can be fixed (a captured graph) while lengths vary:
// splits from `used` on are empty, and their partial state (m = -inf, l = 0) weighs nothing.
struct SplitPlan {
  int32_t first, pos, split_len, used;
};
__device__ __forceinline__ SplitPlan PlanSplits(const PagedDecodeAttentionParams& p, int32_t seq) {
  const int32_t pos = p.positions[seq];
  const int32_t first = p.sliding_window > 0 ? max(0, pos - p.sliding_window + 1) : 0;
  const int32_t len = pos + 1 - first;
  int32_t split_len = max(p.min_split_keys, (len + p.num_splits - 1) / p.num_splits);
  split_len = (split_len + kTileKeys - 1) / kTileKeys * kTileKeys;
  return {first, pos, split_len, min(p.num_splits, (len + split_len - 1) / split_len)};
}

// Keys [r0, r1) of this CTA's split (r0 >= r1: empty).
struct KeyRange {
  int32_t r0, r1;
  int32_t pos;  // the query's position: its key is the one the step's RoPE kernel writes
};
__device__ __forceinline__ KeyRange SplitKeys(const PagedDecodeAttentionParams& p, int32_t seq, int32_t split) {
  const SplitPlan plan = PlanSplits(p, seq);
  const int32_t r0 = plan.first + split * plan.split_len;
  return {r0, min(plan.pos + 1, r0 + plan.split_len), plan.pos};
}

// Merges the CTA's per-warp states (s_acc[w][h][d] over kHs head slots, s_m and s_l [w][h]) and
// writes the output (one split) or this split's partial state.
template <int kD, int kHs>
__device__ __forceinline__ void MergeWarpsAndStore(const PagedDecodeAttentionParams& p, const float* s_acc,
                                                   const float* s_m, const float* s_l, int32_t seq,
                                                   int32_t kv_head, int32_t split) {
  const int32_t group = p.num_heads / p.num_kv_heads;
  for (int i = threadIdx.x; i < group * kD; i += kThreads) {
    const int h = i / kD;
    const int d = i % kD;
    float m_all = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m_all = fmaxf(m_all, s_m[w * kHs + h]);
    float a = 0.0f, sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = Rescale(s_m[w * kHs + h], m_all);
      a += s_acc[(w * kHs + h) * kD + d] * f;
      sum += s_l[w * kHs + h] * f;
    }
    const int32_t head = kv_head * group + h;
    if (p.num_splits == 1) {
      p.out[(static_cast<int64_t>(seq) * p.num_heads + head) * kD + d] =
          __float2bfloat16_rn(sum > 0.0f ? a / sum : 0.0f);
    } else {
      float* part = p.partial + ((static_cast<int64_t>(seq) * p.num_heads + head) * p.num_splits + split) * PartStride(kD);
      part[d] = a;
      if (d == 0) {
        part[kD] = m_all;
        part[kD + 1] = sum;
      }
    }
  }
}

// Shared floats CombineSplits needs as scratch for kHs head slots.
template <int kHs>
constexpr int kCombineScratchFloats = 2 * kHs * kMaxSplits + kHs;

// Combines every split's partial state of the query heads of (seq, kv_head) into the output: m_all =
// max m_s, out = sum a_s f_s / sum l_s f_s with f_s = exp2(m_s - m_all), splits in order (a fixed
// order: the result does not depend on timing or on which CTA combines). Splits past the
// sequence's keys are not read (empty: they would add exactly nothing). All kT threads of the CTA
// call it; `scratch` is shared memory of kCombineScratchFloats<kHs> floats. One memory round when
// at most 16 splits hold keys: each thread's accumulator loads (a float4 of dims per head and
// split) are in flight together with the (m, l) loads.
template <int kD, int kHs, int kT>
__device__ __forceinline__ void CombineSplits(const PagedDecodeAttentionParams& p, float* scratch, int32_t seq,
                                              int32_t kv_head) {
  constexpr int kStride = PartStride(kD);
  constexpr int kBlock = 16;                          // splits whose loads a thread has in flight
  constexpr int kMlLoads = (kHs * kMaxSplits + kT - 1) / kT;
  const int32_t group = p.num_heads / p.num_kv_heads;
  const int32_t ns = p.num_splits;                    // records per head
  const int32_t used = PlanSplits(p, seq).used;       // of them with keys
  const int32_t pairs = group * (kD / 4);             // (head, float4 of dims)
  float* s_f = scratch;                               // [kHs][kMaxSplits]: m_s, then f_s
  float* s_l = scratch + kHs * kMaxSplits;            // [kHs][kMaxSplits]: l_s
  float* s_sum = s_l + kHs * kMaxSplits;              // [kHs]: sum l_s f_s
  // Records ((seq * num_heads + head) * ns + split) * kStride of this KV head's query heads.
  const float* rows = p.partial + (static_cast<int64_t>(seq) * p.num_heads + kv_head * group) * ns * kStride;
  float4 a[kBlock];
  auto load_block = [&](int32_t q, int32_t s0) {
    const float* base = rows + static_cast<int64_t>(q / (kD / 4)) * ns * kStride + (q % (kD / 4)) * 4;
#pragma unroll
    for (int j = 0; j < kBlock; ++j) {
      a[j] = s0 + j < used ? __ldcg(reinterpret_cast<const float4*>(base + static_cast<int64_t>(s0 + j) * kStride))
                         : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  };
  if (static_cast<int32_t>(threadIdx.x) < pairs) load_block(threadIdx.x, 0);
  float2 ml[kMlLoads];
#pragma unroll
  for (int j = 0; j < kMlLoads; ++j) {
    const int32_t i = threadIdx.x + j * kT;  // head i / used, split i % used
    const int64_t record = static_cast<int64_t>(i / max(used, 1)) * ns + i % max(used, 1);
    ml[j] = i < group * used ? __ldcg(reinterpret_cast<const float2*>(rows + record * kStride + kD))
                             : make_float2(0.0f, 0.0f);
  }
#pragma unroll
  for (int j = 0; j < kMlLoads; ++j) {
    const int32_t i = threadIdx.x + j * kT;
    if (i < group * used) {
      s_f[(i / used) * kMaxSplits + i % used] = ml[j].x;
      s_l[(i / used) * kMaxSplits + i % used] = ml[j].y;
    }
  }
  __syncthreads();
  if (static_cast<int32_t>(threadIdx.x) < group) {
    float* f = s_f + threadIdx.x * kMaxSplits;
    const float* l = s_l + threadIdx.x * kMaxSplits;
    float m_all = -INFINITY;
    for (int s = 0; s < used; ++s) m_all = fmaxf(m_all, f[s]);
    float sum = 0.0f;
    for (int s = 0; s < used; ++s) {
      f[s] = Rescale(f[s], m_all);
      sum += l[s] * f[s];
    }
    s_sum[threadIdx.x] = sum;
  }
  __syncthreads();
  for (int32_t q = threadIdx.x; q < pairs; q += kT) {
    const int32_t h = q / (kD / 4);
    const float* f = s_f + h * kMaxSplits;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int32_t s0 = 0; s0 < used; s0 += kBlock) {
      if (q != static_cast<int32_t>(threadIdx.x) || s0 > 0) load_block(q, s0);
#pragma unroll
      for (int j = 0; j < kBlock; ++j) {
        if (s0 + j < used) {
          const float fs = f[s0 + j];
          acc.x += a[j].x * fs;
          acc.y += a[j].y * fs;
          acc.z += a[j].z * fs;
          acc.w += a[j].w * fs;
        }
      }
    }
    const float sum = s_sum[h];
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    __nv_bfloat16* out =
        p.out + (static_cast<int64_t>(seq) * p.num_heads + kv_head * group + h) * kD + (q % (kD / 4)) * 4;
    const uint2 packed = make_uint2(PackBf16(acc.x * inv, acc.y * inv), PackBf16(acc.z * inv, acc.w * inv));
    *reinterpret_cast<uint2*>(out) = packed;
  }
}

// In-kernel combine (p.split_counters, 2 <= num_splits <= kMaxSplits), after MergeWarpsAndStore
// wrote this split's partial state: the split CTA of (seq, kv_head) that counts last combines every
// split's state into the output ("last block reduces", CombineSplits) and re-arms the counter to 0.
// `scratch` is shared memory of kCombineScratchFloats<kHs> floats that no thread reads any more.
template <int kD, int kHs>
__device__ __forceinline__ void CombineIfLastSplit(const PagedDecodeAttentionParams& p, float* scratch, int32_t seq,
                                                   int32_t kv_head) {
  __threadfence();  // this thread's partial stores are visible device-wide before the CTA counts
  __syncthreads();  // ... for every thread of the CTA (and every thread is done reading the scratch)
  int32_t* counter = p.split_counters + static_cast<int64_t>(seq) * p.num_kv_heads + kv_head;
  bool last = false;
  if (threadIdx.x == 0) last = atomicAdd(counter, 1) == p.num_splits - 1;
  if (!__syncthreads_or(last)) return;
  __threadfence();  // the other splits' states are read after their counts were seen
  CombineSplits<kD, kHs, kThreads>(p, scratch, seq, kv_head);
  // Every split of this (seq, kv_head) has counted: the next launch on the buffer starts from 0.
  if (threadIdx.x == 0) *counter = 0;
}

// ---- CUDA-core kernel (head dim 256; the "before" of the tensor-core kernel in benchmarks) ----

// kD: head dim; kG: query heads per KV head this instance holds (the runtime group is <= kG).
// Lanes form subgroups of kL = kD / 8 lanes; a subgroup reads one key row (16 bytes per lane) and
// keeps its own online-softmax state for the 8 dims its lanes own; states merge at the end.
template <int kD, int kG>
__global__ void __launch_bounds__(kThreads) CudaCoreDecodeKernel(PagedDecodeAttentionParams p) {
  constexpr int kL = kD / 8;             // lanes per key row
  constexpr int kS = 32 / kL;            // key rows per warp per load round
  constexpr int kU = kG <= 4 ? 4 : 2;    // load rounds in flight
  constexpr int kKeysPerWarpStep = kS * kU;
  __shared__ float s_acc[kWarps][kG][kD];
  __shared__ float s_m[kWarps][kG], s_l[kWarps][kG];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int sub = lane / kL;
  const int li = lane % kL;
  const int32_t split = blockIdx.x;
  const int32_t kv_head = blockIdx.y;
  const int32_t seq = blockIdx.z;
  const int32_t group = p.num_heads / p.num_kv_heads;

  AllowDependentLaunch();
  const KeyRange range = SplitKeys(p, seq, split);  // positions: uploaded before the step
  const int32_t r0 = range.r0, r1 = range.r1;
  WaitForPrerequisiteGrids();  // q and the query's own K/V come from the kernel before (PDL only)

  // This lane's 8 dims of every query head, scaled so scores are in log2 units.
  float q[kG][8];
  const float q_scale = p.scale * kLog2e;
  const __nv_bfloat16* q_row = p.q + static_cast<int64_t>(seq) * p.num_heads * kD;
#pragma unroll
  for (int h = 0; h < kG; ++h) {
    if (h < group) {
      const uint4 raw = *reinterpret_cast<const uint4*>(q_row + (kv_head * group + h) * kD + li * 8);
      Bf16x8ToFloat(raw, q[h]);
#pragma unroll
      for (int d = 0; d < 8; ++d) q[h][d] *= q_scale;
    } else {
#pragma unroll
      for (int d = 0; d < 8; ++d) q[h][d] = 0.0f;
    }
  }
  float m[kG], l[kG], acc[kG][8];
#pragma unroll
  for (int h = 0; h < kG; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
#pragma unroll
    for (int d = 0; d < 8; ++d) acc[h][d] = 0.0f;
  }

  const int32_t* table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
  const int64_t head_offset = static_cast<int64_t>(kv_head) * p.block_size * kD + li * 8;
  const int64_t block_stride = static_cast<int64_t>(p.num_kv_heads) * p.block_size * kD;
  for (int32_t base = r0 + warp * kKeysPerWarpStep; base < r1; base += kWarps * kKeysPerWarpStep) {
    uint4 kr[kU], vr[kU];
    bool valid[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int32_t key = base + u * kS + sub;
      valid[u] = key < r1;
      if (valid[u]) {
        const int64_t off = table[key / p.block_size] * block_stride + head_offset +
                            static_cast<int64_t>(key % p.block_size) * kD;
        kr[u] = __ldcs(reinterpret_cast<const uint4*>(p.k_cache + off));
        vr[u] = __ldcs(reinterpret_cast<const uint4*>(p.v_cache + off));
      } else {
        kr[u] = make_uint4(0, 0, 0, 0);
        vr[u] = make_uint4(0, 0, 0, 0);
      }
    }
    float s[kU][kG];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      float kf[8];
      Bf16x8ToFloat(kr[u], kf);
#pragma unroll
      for (int h = 0; h < kG; ++h) {
        float dot = 0.0f;
#pragma unroll
        for (int d = 0; d < 8; ++d) dot = fmaf(q[h][d], kf[d], dot);
#pragma unroll
        for (int o = kL / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        s[u][h] = valid[u] ? dot : -INFINITY;
      }
    }
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      float mx = s[0][h];
#pragma unroll
      for (int u = 1; u < kU; ++u) mx = fmaxf(mx, s[u][h]);
      const float m_new = fmaxf(m[h], mx);
      if (m_new == -INFINITY) continue;  // nothing visible yet in this subgroup
      const float alpha = Rescale(m[h], m_new);
      m[h] = m_new;
      l[h] *= alpha;
#pragma unroll
      for (int d = 0; d < 8; ++d) acc[h][d] *= alpha;
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const float pu = exp2f(s[u][h] - m_new);  // 0 for an invalid key
        l[h] += pu;
        float vf[8];
        Bf16x8ToFloat(vr[u], vf);
#pragma unroll
        for (int d = 0; d < 8; ++d) acc[h][d] = fmaf(pu, vf[d], acc[h][d]);
      }
    }
  }

  // Merge the subgroups of the warp (lanes li, li + kL, ...).
#pragma unroll
  for (int o = kL; o < 32; o <<= 1) {
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      const float m_o = __shfl_xor_sync(0xffffffffu, m[h], o);
      const float l_o = __shfl_xor_sync(0xffffffffu, l[h], o);
      const float m_new = fmaxf(m[h], m_o);
      const float fa = Rescale(m[h], m_new), fb = Rescale(m_o, m_new);
      l[h] = l[h] * fa + l_o * fb;
#pragma unroll
      for (int d = 0; d < 8; ++d) {
        const float a_o = __shfl_xor_sync(0xffffffffu, acc[h][d], o);
        acc[h][d] = acc[h][d] * fa + a_o * fb;
      }
      m[h] = m_new;
    }
  }
  if (sub == 0) {
#pragma unroll
    for (int h = 0; h < kG; ++h) {
#pragma unroll
      for (int d = 0; d < 8; ++d) s_acc[warp][h][li * 8 + d] = acc[h][d];
      if (li == 0) {
        s_m[warp][h] = m[h];
        s_l[warp][h] = l[h];
      }
    }
  }
  __syncthreads();

  MergeWarpsAndStore<kD, kG>(p, &s_acc[0][0][0], &s_m[0][0], &s_l[0][0], seq, kv_head, split);
  static_assert(kCombineScratchFloats<kG> <= kWarps * kG * kD);
  if (p.split_counters != nullptr && p.num_splits > 1) CombineIfLastSplit<kD, kG>(p, &s_acc[0][0][0], seq, kv_head);
}

// ---- tensor-core kernel (head dims 64, 128) ----

// A warp's ring: kStages stages of one tile each, K then V, rows of kD bf16 whose 16-byte chunks
// are XOR-swizzled by (row % 8) so the 8 rows one ldmatrix phase reads hit distinct bank groups.
template <int kD, int kStages>
struct TcShape {
  static constexpr int kChunks = kD / 8;                       // 16-byte chunks per row
  static constexpr int kTileBytes = kTileKeys * kD * 2;        // K (or V) of one tile
  static constexpr int kChunksPerLane = kTileKeys * kChunks / 32;  // of K (and of V) per tile
  static constexpr int kWarpBytes = kStages * 2 * kTileBytes;
  static constexpr size_t kRingBytes = static_cast<size_t>(kWarps) * kWarpBytes;
  // The epilogue reuses the ring: per-warp accumulators of 8 head slots, then m and l.
  static constexpr size_t kMergeBytes = sizeof(float) * kWarps * 8 * (kD + 2);  // s_acc, s_m, s_l
  static constexpr size_t kSmemBytes = kRingBytes > kMergeBytes ? kRingBytes : kMergeBytes;
  static_assert(kChunksPerLane * 32 == kTileKeys * kChunks && 32 % kChunks == 0);
};

__device__ __forceinline__ float2 Bf16PairToFloat2(uint32_t v) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v));
}

// kRope, the CTA whose split holds the query's position: the new key rotated (as RopeWriteKvKernel)
// and the new value into s_new [2][kD] and, unless the slot is negative (a padded row), into the
// cache. After griddepcontrol.wait (qkv comes from the kernel before; the cache is written).
template <int kD>
__device__ __forceinline__ void WriteNewKeyAndValue(const PagedDecodeAttentionParams& p, int64_t qkv_row,
                                                    int32_t kv_head, int32_t pos, int64_t slot,
                                                    __nv_bfloat16* s_new) {
  constexpr int kHalf = kD / 2;
  const __nv_bfloat16* __restrict__ k_src = p.qkv + qkv_row + static_cast<int64_t>(p.num_heads + kv_head) * kD;
  const __nv_bfloat16* __restrict__ v_src = k_src + static_cast<int64_t>(p.num_kv_heads) * kD;
  const int64_t cache = slot < 0 ? 0
                                 : ((slot / p.block_size * p.num_kv_heads + kv_head) * p.block_size +
                                    slot % p.block_size) * kD;
  for (int i = threadIdx.x; i < kHalf; i += kThreads) {
    const float x1 = __bfloat162float(k_src[i]);
    const float x2 = __bfloat162float(k_src[i + kHalf]);
    const float c = p.rope_cos[static_cast<int64_t>(pos) * kHalf + i];
    const float sn = p.rope_sin[static_cast<int64_t>(pos) * kHalf + i];
    const __nv_bfloat16 a = __float2bfloat16_rn(x1 * c - x2 * sn);
    const __nv_bfloat16 b = __float2bfloat16_rn(x2 * c + x1 * sn);
    s_new[i] = a;
    s_new[i + kHalf] = b;
    if (slot >= 0) {
      p.k_cache_out[cache + i] = a;
      p.k_cache_out[cache + i + kHalf] = b;
    }
  }
  for (int i = threadIdx.x; i < kD; i += kThreads) {
    const __nv_bfloat16 v = v_src[i];
    s_new[kD + i] = v;
    if (slot >= 0) p.v_cache_out[cache + i] = v;
  }
}

// kRope: one warp folds the new key (s_new: key, then value) into its online-softmax state after
// its tiles, with the tile loop's arithmetic: score in log2 units, P rounded to bf16 once, lane
// t == 0 of each quad adds it to l (l is the quad's sum at the end), O rows g (c[0..1]).
template <int kD>
__device__ __forceinline__ void AttendToNewKey(const uint32_t (&qa)[kD / 16][2], const __nv_bfloat16* s_new,
                                               float q_scale, int t, float& m, float& l, float (&o)[kD / 8][4]) {
  const uint32_t* k_pairs = reinterpret_cast<const uint32_t*>(s_new);
  const uint32_t* v_pairs = reinterpret_cast<const uint32_t*>(s_new + kD);
  float dot = 0.0f;
#pragma unroll
  for (int kc = 0; kc < kD / 16; ++kc) {
#pragma unroll
    for (int w = 0; w < 2; ++w) {
      const float2 q = Bf16PairToFloat2(qa[kc][w]);
      const float2 k = Bf16PairToFloat2(k_pairs[kc * 8 + t + 4 * w]);
      dot = fmaf(q.x, k.x, fmaf(q.y, k.y, dot));
    }
  }
  dot += __shfl_xor_sync(0xffffffffu, dot, 1);
  dot += __shfl_xor_sync(0xffffffffu, dot, 2);
  const float sc = dot * q_scale;
  const float m_new = fmaxf(m, sc);
  const float alpha = Rescale(m, m_new);
  const float pb = __bfloat162float(__float2bfloat16_rn(Exp2(sc - m_new)));
  m = m_new;
  l = l * alpha + (t == 0 ? pb : 0.0f);
#pragma unroll
  for (int n = 0; n < kD / 8; ++n) {
    const float2 v = Bf16PairToFloat2(v_pairs[n * 4 + t]);
    o[n][0] = fmaf(pb, v.x, o[n][0] * alpha);
    o[n][1] = fmaf(pb, v.y, o[n][1] * alpha);
  }
}

// Fragment layouts (PTX ISA, mma.m16n8k16): lane = 4 * g + t. Scores S = Q K^T of one tile as two
// 16x8 tiles (keys 0-7, 8-15): this lane holds head g, keys 2t, 2t+1 (+8) in c[0..1]; rows g + 8
// (heads past the group's 8) are zero in A and ignored. Those c[0..1] pairs are exactly the A
// fragment of P for P V, and V comes in through ldmatrix.trans; O (16 x kD) accumulates in
// kD / 8 tiles of which this lane's c[0..1] are head g, dims 8n + 2t, 2t+1.
// kRope (PagedDecodeAttentionParams::qkv): q and the query's own key and value come from the fused
// projection; q is rotated in registers (a lane's columns c < kD / 2 and c + kD / 2 are its own),
// the CTA whose split holds the query's position rotates the new key, writes it and the value into
// the cache and attends to it from shared memory after its tiles, so every tile load reads keys
// before the position (none waits on this step's write).
template <int kD, int kStages, bool kRope>
__global__ void __launch_bounds__(kThreads, 2) TensorCoreDecodeKernel(PagedDecodeAttentionParams p) {
  using S = TcShape<kD, kStages>;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ __align__(16) __nv_bfloat16 s_new[kRope ? 2 : 1][kRope ? kD : 2];  // the new key, then value
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int32_t split = blockIdx.x;
  const int32_t kv_head = blockIdx.y;
  const int32_t seq = blockIdx.z;
  const int32_t group = p.num_heads / p.num_kv_heads;
  AllowDependentLaunch();
  // Until WaitForPrerequisiteGrids (PDL only): positions, tables and the K/V of keys before the
  // query's position, nothing else (see paged_decode_attention.cuh).
  const int32_t* table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
  // Blocks of a multiple of 16 keys hold whole tiles: one table lookup per tile, prefetched a tile ahead.
  const bool whole_tiles = p.block_size % kTileKeys == 0;
  // Split 0 without a window starts at key 0 whatever the length, so the blocks of its first tiles
  // are looked up beside the position, not after it (an entry past the sequence's blocks is read,
  // never used).
  const bool early = split == 0 && p.sliding_window <= 0 && whole_tiles;
  int32_t early_block[kStages];
#pragma unroll
  for (int i = 0; i < kStages; ++i) {
    const int32_t b = (warp + kWarps * i) * kTileKeys / p.block_size;
    early_block[i] = early && b < p.max_blocks_per_seq ? table[b] : 0;
  }
  const KeyRange range = SplitKeys(p, seq, split);
  // With kRope the split holding the position takes its key from s_new, the tiles end before it.
  const bool has_new = kRope && range.r0 <= range.pos && range.pos < range.r1;
  const int32_t r0 = range.r0, r1 = has_new ? range.pos : range.r1;
  const float q_scale = p.scale * kLog2e;
  // kRope: cos / sin at the position for this lane's columns of the first half (chunk kc: 16kc + 2t,
  // +1, +8, +9), immutable tables read before the wait; and the new key's slot.
  constexpr int kHalfChunks = kD / 32;
  float rope_c[kRope ? kHalfChunks : 1][4], rope_s[kRope ? kHalfChunks : 1][4];
  int64_t new_slot = -1;
  if constexpr (kRope) {
    const float* cos_row = p.rope_cos + static_cast<int64_t>(range.pos) * (kD / 2);
    const float* sin_row = p.rope_sin + static_cast<int64_t>(range.pos) * (kD / 2);
#pragma unroll
    for (int kc = 0; kc < kHalfChunks; ++kc) {
#pragma unroll
      for (int w = 0; w < 2; ++w) {
        const float2 c = *reinterpret_cast<const float2*>(cos_row + kc * 16 + 2 * t + 8 * w);
        const float2 sn = *reinterpret_cast<const float2*>(sin_row + kc * 16 + 2 * t + 8 * w);
        rope_c[kc][2 * w] = c.x;
        rope_c[kc][2 * w + 1] = c.y;
        rope_s[kc][2 * w] = sn.x;
        rope_s[kc][2 * w + 1] = sn.y;
      }
    }
    if (has_new) new_slot = p.slot_mapping[seq];
  }
  float o[kD / 8][4];
#pragma unroll
  for (int n = 0; n < kD / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m = -INFINITY, l = 0.0f;  // head g; l is this lane's share until the end

  // This warp's tiles: tile_begin + warp + kWarps * i, i < n_tiles (each holds a key of the range).
  const int32_t tile_begin = r0 / kTileKeys;
  const int32_t tile_end = r0 < r1 ? (r1 + kTileKeys - 1) / kTileKeys : tile_begin;
  const int32_t n_tiles = max(0, (tile_end - tile_begin - warp + kWarps - 1) / kWarps);
  const int64_t block_stride = static_cast<int64_t>(p.num_kv_heads) * p.block_size * kD;
  const __nv_bfloat16* k_head = p.k_cache + static_cast<int64_t>(kv_head) * p.block_size * kD;
  const __nv_bfloat16* v_head = p.v_cache + static_cast<int64_t>(kv_head) * p.block_size * kD;
  const uint32_t ring = SmemAddr(smem) + warp * S::kWarpBytes;
  const uint64_t stream_policy = L2EvictFirstPolicy();  // K/V is read once
  auto tile_key = [&](int32_t i) { return (tile_begin + warp + kWarps * i) * kTileKeys; };
  auto tile_block = [&](int32_t i) { return whole_tiles ? table[tile_key(i) / p.block_size] : 0; };
  // This lane's chunks of a tile: rows lane / kChunks + j * (32 / kChunks), column lane % kChunks.
  const int col = lane % S::kChunks;
  const int row0 = lane / S::kChunks;
  auto issue = [&](int32_t i, int32_t block) {
    const int32_t key0 = tile_key(i);
    const uint32_t k_dst = ring + (i % kStages) * 2 * S::kTileBytes;
    const int64_t tile_src = static_cast<int64_t>(block) * block_stride + static_cast<int64_t>(key0 % p.block_size) * kD;
#pragma unroll
    for (int j = 0; j < S::kChunksPerLane; ++j) {
      const int row = row0 + j * (32 / S::kChunks);
      const int32_t key = key0 + row;
      const bool valid = key >= r0 && key < r1;
      int64_t src = tile_src + row * kD;
      if (!whole_tiles) {
        src = valid ? table[key / p.block_size] * block_stride + static_cast<int64_t>(key % p.block_size) * kD : 0;
      }
      const uint32_t dst = k_dst + row * (kD * 2) + ((col ^ (row & 7)) << 4);
      CpAsync16(dst, k_head + src + col * 8, valid, stream_policy);
      CpAsync16(dst + S::kTileBytes, v_head + src + col * 8, valid, stream_policy);
    }
  };
  // ldmatrix row addresses: lane supplies row (lane & 7) of matrix (lane >> 3).
  const int mat = lane >> 3, mrow = lane & 7;
  const uint32_t k_lane = ((mat >> 1) * 8 + mrow) * (kD * 2);  // K: matrices (keys 0-7 | 8-15) x (chunk 2kc | 2kc+1)
  const int k_chunk = mat & 1;
  const uint32_t v_lane = ((mat & 1) * 8 + mrow) * (kD * 2);   // V: matrices (keys 0-7 | 8-15) x (dims 16n | 16n+8)
  const int v_chunk = mat >> 1;

  // The first tiles, issued before the wait when programmatic, except a tile holding the query's
  // own key (written by the kernel before): only the sequence's last tile can, so only this warp's
  // last tile (n_tiles - 1). It is issued after the wait in a commit group of its own, and the
  // iteration that reads it waits for every group.
  int32_t deferred = -1;
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < n_tiles) {
      if (kRope || !p.programmatic || tile_key(i) + kTileKeys <= range.pos) {
        issue(i, early ? early_block[i] : tile_block(i));
      } else {
        deferred = i;
      }
    }
    CpAsyncCommit();
  }
  int32_t next_block = kStages - 1 < n_tiles ? (early ? early_block[kStages - 1] : tile_block(kStages - 1)) : 0;
  WaitForPrerequisiteGrids();  // q and the query's own K/V come from the kernel before (PDL only)
  if (deferred >= 0) {
    issue(deferred, tile_block(deferred));
    CpAsyncCommit();
  }

  // Q of head g as A fragments (k chunks of 16 dims): cols 2t, 2t+1 and 2t+8, 2t+9.
  uint32_t qa[kD / 16][2];
  const int64_t qkv_row = static_cast<int64_t>(seq) * (p.num_heads + 2 * p.num_kv_heads) * kD;
  {
    const bool head_ok = g < group;
    const int64_t head = kv_head * group + (head_ok ? g : 0);
    const __nv_bfloat16* q_row = kRope ? p.qkv + qkv_row + head * kD
                                       : p.q + (static_cast<int64_t>(seq) * p.num_heads + head) * kD;
#pragma unroll
    for (int kc = 0; kc < kD / 16; ++kc) {
      qa[kc][0] = head_ok ? *reinterpret_cast<const uint32_t*>(q_row + kc * 16 + 2 * t) : 0u;
      qa[kc][1] = head_ok ? *reinterpret_cast<const uint32_t*>(q_row + kc * 16 + 2 * t + 8) : 0u;
    }
  }
  if constexpr (kRope) {
    // HF rotate_half, as RopeWriteKvKernel: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), to bf16.
#pragma unroll
    for (int kc = 0; kc < kHalfChunks; ++kc) {
#pragma unroll
      for (int w = 0; w < 2; ++w) {
        const float2 x1 = Bf16PairToFloat2(qa[kc][w]);
        const float2 x2 = Bf16PairToFloat2(qa[kc + kHalfChunks][w]);
        const float c0 = rope_c[kc][2 * w], c1 = rope_c[kc][2 * w + 1];
        const float s0 = rope_s[kc][2 * w], s1 = rope_s[kc][2 * w + 1];
        qa[kc][w] = PackBf16(x1.x * c0 - x2.x * s0, x1.y * c1 - x2.y * s1);
        qa[kc + kHalfChunks][w] = PackBf16(x2.x * c0 + x1.x * s0, x2.y * c1 + x1.y * s1);
      }
    }
    if (has_new) WriteNewKeyAndValue<kD>(p, qkv_row, kv_head, range.pos, new_slot, &s_new[0][0]);
  }

  for (int32_t i = 0; i < n_tiles; ++i) {
    const int32_t ahead = i + kStages - 1;
    if (ahead < n_tiles) issue(ahead, next_block);
    CpAsyncCommit();
    if (ahead + 1 < n_tiles) next_block = tile_block(ahead + 1);
    if (i == deferred) {
      CpAsyncWait<0>();  // the deferred tile's group is younger than the kStages - 1 allowed pending
    } else {
      CpAsyncWait<kStages - 1>();
    }
    __syncwarp();
    const uint32_t k_tile = ring + (i % kStages) * 2 * S::kTileBytes;
    const uint32_t v_tile = k_tile + S::kTileBytes;

    // Scores of keys 0-7 (s0) and 8-15 (s1), even and odd k chunks in separate accumulators: two
    // dependent mma chains of half the length (the last tiles' latency is the kernel's tail).
    float s0[2][4] = {}, s1[2][4] = {};
#pragma unroll
    for (int kc = 0; kc < kD / 16; ++kc) {
      uint32_t b[4];
      LdMatrixX4(b, k_tile + k_lane + (((2 * kc + k_chunk) ^ mrow) << 4));
      const uint32_t a[4] = {qa[kc][0], 0u, qa[kc][1], 0u};
      Mma(s0[kc & 1], a, b[0], b[1]);
      Mma(s1[kc & 1], a, b[2], b[3]);
    }
    const int32_t key0 = tile_key(i) + 2 * t;
    // Keys key0, key0 + 1, key0 + 8, key0 + 9.
    float sc[4] = {s0[0][0] + s0[1][0], s0[0][1] + s0[1][1], s1[0][0] + s1[1][0], s1[0][1] + s1[1][1]};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int32_t key = key0 + (e >> 1) * 8 + (e & 1);
      sc[e] = key >= r0 && key < r1 ? sc[e] * q_scale : -INFINITY;
    }
    float mx = fmaxf(fmaxf(sc[0], sc[1]), fmaxf(sc[2], sc[3]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m, mx);  // finite: every tile holds a key of the range
    const float alpha = Rescale(m, m_new);
    m = m_new;
    // P rounded to bf16 once: the same weights go into l and into P V.
    const uint32_t p01 = PackBf16(Exp2(sc[0] - m_new), Exp2(sc[1] - m_new));
    const uint32_t p89 = PackBf16(Exp2(sc[2] - m_new), Exp2(sc[3] - m_new));
    const float2 f01 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&p01));
    const float2 f89 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&p89));
    l = l * alpha + (f01.x + f01.y) + (f89.x + f89.y);
    const uint32_t pa[4] = {p01, 0u, p89, 0u};
#pragma unroll
    for (int n = 0; n < kD / 16; ++n) {
      o[2 * n][0] *= alpha;
      o[2 * n][1] *= alpha;
      o[2 * n + 1][0] *= alpha;
      o[2 * n + 1][1] *= alpha;
      uint32_t b[4];
      LdMatrixX4Trans(b, v_tile + v_lane + (((2 * n + v_chunk) ^ mrow) << 4));
      Mma(o[2 * n], pa, b[0], b[1]);
      Mma(o[2 * n + 1], pa, b[2], b[3]);
    }
    __syncwarp();  // every lane's ldmatrix of this stage is done before it is refilled
  }
  CpAsyncWait<0>();
  if (has_new) {
    __syncthreads();  // s_new is written
    if (warp == 0) AttendToNewKey<kD>(qa, &s_new[0][0], q_scale, t, m, l, o);
  }
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);

  __syncthreads();  // every warp is done with its ring: the epilogue reuses it
  float* s_acc = reinterpret_cast<float*>(smem);  // [kWarps][8][kD]
  float* s_m = s_acc + kWarps * 8 * kD;           // [kWarps][8]
  float* s_l = s_m + kWarps * 8;
#pragma unroll
  for (int n = 0; n < kD / 8; ++n) {
    *reinterpret_cast<float2*>(&s_acc[(warp * 8 + g) * kD + 8 * n + 2 * t]) = make_float2(o[n][0], o[n][1]);
  }
  if (t == 0) {
    s_m[warp * 8 + g] = m;
    s_l[warp * 8 + g] = l;
  }
  __syncthreads();
  MergeWarpsAndStore<kD, 8>(p, s_acc, s_m, s_l, seq, kv_head, split);
  static_assert(kCombineScratchFloats<8> * sizeof(float) <= S::kSmemBytes);
  if (p.split_counters != nullptr && p.num_splits > 1) {
    CombineIfLastSplit<kD, 8>(p, reinterpret_cast<float*>(smem), seq, kv_head);
  }
}

// One CTA per (KV head, sequence): combines the splits' partial states of its query heads.
template <int kD, int kHs>
__global__ void __launch_bounds__(kThreads) CombineSplitsKernel(PagedDecodeAttentionParams p) {
  __shared__ float scratch[kCombineScratchFloats<kHs>];
  AllowDependentLaunch();
  WaitForPrerequisiteGrids();  // the partial states come from the kernel before (PDL only)
  CombineSplits<kD, kHs, kThreads>(p, scratch, blockIdx.y, blockIdx.x);
}

// The combine kernel, unless there is one split or the attention kernel combined in itself.
cudaError_t LaunchCombine(const PagedDecodeAttentionParams& p, cudaStream_t stream) {
  if (p.num_splits == 1 || p.split_counters != nullptr) return cudaSuccess;
  const dim3 grid(p.num_kv_heads, p.num_seqs);
  switch (p.head_dim) {
    case 64: return LaunchKernel(p.programmatic, CombineSplitsKernel<64, 8>, grid, dim3(kThreads), stream, p);
    case 128: return LaunchKernel(p.programmatic, CombineSplitsKernel<128, 8>, grid, dim3(kThreads), stream, p);
    default: return LaunchKernel(p.programmatic, CombineSplitsKernel<256, 8>, grid, dim3(kThreads), stream, p);
  }
}

template <int kD, int kG>
cudaError_t LaunchCudaCore(const PagedDecodeAttentionParams& p, cudaStream_t stream) {
  const dim3 grid(p.num_splits, p.num_kv_heads, p.num_seqs);
  const cudaError_t err = LaunchKernel(p.programmatic, CudaCoreDecodeKernel<kD, kG>, grid, dim3(kThreads), stream, p);
  return err != cudaSuccess ? err : LaunchCombine(p, stream);
}

template <int kD>
cudaError_t LaunchCudaCoreForHeadDim(const PagedDecodeAttentionParams& p, cudaStream_t stream) {
  const int32_t group = p.num_heads / p.num_kv_heads;
  if (group <= 1) return LaunchCudaCore<kD, 1>(p, stream);
  if (group <= 2) return LaunchCudaCore<kD, 2>(p, stream);
  if (group <= 4) return LaunchCudaCore<kD, 4>(p, stream);
  return LaunchCudaCore<kD, 8>(p, stream);
}

template <int kD, int kStages>
cudaError_t LaunchTensorCore(const PagedDecodeAttentionParams& p, cudaStream_t stream) {
  constexpr size_t kBytes = TcShape<kD, kStages>::kSmemBytes;
  const dim3 grid(p.num_splits, p.num_kv_heads, p.num_seqs);
  const cudaError_t err =
      p.qkv != nullptr
          ? LaunchKernelWithSmem(p.programmatic, TensorCoreDecodeKernel<kD, kStages, true>, grid, dim3(kThreads),
                                 kBytes, stream, p)
          : LaunchKernelWithSmem(p.programmatic, TensorCoreDecodeKernel<kD, kStages, false>, grid, dim3(kThreads),
                                 kBytes, stream, p);
  return err != cudaSuccess ? err : LaunchCombine(p, stream);
}

// Ring stages per warp: 24 KB (3 x 8 KB tiles at head dim 128, 6 x 4 KB at 64), 96 KB per CTA,
// 2 CTAs per SM.
template <int kD>
cudaError_t LaunchTensorCoreForHeadDim(const PagedDecodeAttentionParams& p, cudaStream_t stream) {
  return LaunchTensorCore<kD, 24 * 1024 / (2 * kTileKeys * kD * 2)>(p, stream);
}

}  // namespace

bool PagedDecodeAttentionSupports(int32_t head_dim, int32_t group) {
  return (head_dim == 64 || head_dim == 128 || head_dim == 256) && group >= 1 && group <= 8;
}

bool PagedDecodeAttentionTensorCores(int32_t head_dim) { return head_dim == 64 || head_dim == 128; }

bool PagedDecodeAttentionFusesRope(int32_t head_dim, int32_t rotary_dim) {
  return PagedDecodeAttentionTensorCores(head_dim) && rotary_dim == head_dim;
}

int32_t PagedDecodeAttentionSplits(int32_t num_seqs, int32_t num_kv_heads, int32_t max_context, int32_t num_sms,
                                   PagedDecodeKernel kernel, int32_t min_split_keys) {
  const int64_t pairs = std::max<int64_t>(1, static_cast<int64_t>(num_seqs) * num_kv_heads);
  const int64_t slots = static_cast<int64_t>(kCtasPerSm) * std::max(1, num_sms);
  const int64_t keys = std::max(16, min_split_keys);
  const int64_t by_length = std::max<int64_t>(1, (static_cast<int64_t>(max_context) + keys - 1) / keys);
  if (kernel == PagedDecodeKernel::kCudaCore) {
    const int64_t want = (2LL * std::max(1, num_sms) + pairs - 1) / pairs;
    return static_cast<int32_t>(std::max<int64_t>(1, std::min({want, by_length, int64_t{kMaxSplits}})));
  }
  const int64_t cap = std::min<int64_t>(by_length, kMaxSplits);
  for (int64_t s = 1; s < cap; ++s) {
    const int64_t ctas = pairs * s;
    const int64_t waves = (ctas + slots - 1) / slots;
    if (10 * ctas >= 9 * waves * slots) return static_cast<int32_t>(s);
  }
  return static_cast<int32_t>(cap);
}

size_t PagedDecodeAttentionPartialFloats(int32_t num_seqs, int32_t num_heads, int32_t head_dim, int32_t num_splits) {
  if (num_splits <= 1) return 0;
  return static_cast<size_t>(num_seqs) * num_heads * num_splits * PartStride(head_dim);
}

size_t PagedDecodeAttentionSplitCounters(int32_t num_seqs, int32_t num_kv_heads) {
  return static_cast<size_t>(std::max(0, num_seqs)) * std::max(0, num_kv_heads);
}

bool PagedDecodeAttentionCombinesInKernel(int32_t num_splits) { return num_splits > 1 && num_splits <= kMaxSplits; }

cudaError_t LaunchPagedDecodeAttention(const PagedDecodeAttentionParams& params, cudaStream_t stream) {
  PagedDecodeAttentionParams p = params;
  // Counters only where the kernel combines (its scratch holds kMaxSplits states per head).
  if (!PagedDecodeAttentionCombinesInKernel(p.num_splits)) p.split_counters = nullptr;
  if (p.num_kv_heads <= 0 || p.num_heads % p.num_kv_heads != 0 || p.num_splits < 1) return cudaErrorInvalidValue;
  if (!PagedDecodeAttentionSupports(p.head_dim, p.num_heads / p.num_kv_heads)) return cudaErrorInvalidValue;
  if (p.num_splits > 1 && p.partial == nullptr) return cudaErrorInvalidValue;
  if (p.num_splits > kMaxSplits) return cudaErrorInvalidValue;  // the combine's scratch holds 64 states
  if (p.min_split_keys < kTileKeys || p.min_split_keys % kTileKeys != 0) return cudaErrorInvalidValue;
  const bool tensor_cores = p.kernel == PagedDecodeKernel::kAuto ? PagedDecodeAttentionTensorCores(p.head_dim)
                                                                 : p.kernel == PagedDecodeKernel::kTensorCore;
  if (tensor_cores && !PagedDecodeAttentionTensorCores(p.head_dim)) return cudaErrorInvalidValue;
  if (p.qkv != nullptr &&
      (!tensor_cores || !PagedDecodeAttentionFusesRope(p.head_dim, p.rotary_dim) || p.rope_cos == nullptr ||
       p.rope_sin == nullptr || p.slot_mapping == nullptr || p.k_cache_out == nullptr || p.v_cache_out == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (p.num_seqs == 0) return cudaSuccess;
  switch (p.head_dim) {
    case 64: return tensor_cores ? LaunchTensorCoreForHeadDim<64>(p, stream) : LaunchCudaCoreForHeadDim<64>(p, stream);
    case 128: return tensor_cores ? LaunchTensorCoreForHeadDim<128>(p, stream) : LaunchCudaCoreForHeadDim<128>(p, stream);
    case 256: return LaunchCudaCoreForHeadDim<256>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace tandem::kernels
