#include "kernels/paged_attention.cuh"

#include <climits>

#include "kernels/kernel_utils.cuh"

namespace tandem::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = kPagedAttentionRowsPerCta;
constexpr int kRowsPerWarp = kRows / kWarps;
constexpr int kKeys = 32;  // keys per K/V tile: one per lane when scoring
constexpr float kLog2e = 1.4426950408889634f;

template <int kHeadDim>
struct Layout {
  static constexpr int kPairs = kHeadDim / 2;
  static constexpr int kPairsPerLane = (kPairs + 31) / 32;
  // K/V rows padded by one bf16 pair: lane j reading pair d of key j hits bank (j + d) % 32.
  static constexpr int kStride = kHeadDim + 2;
  static constexpr size_t kQBytes = sizeof(float) * kRows * kHeadDim;
  static constexpr size_t kPBytes = sizeof(float) * kWarps * kRowsPerWarp * kKeys;
  static constexpr size_t kKvBytes = sizeof(__nv_bfloat16) * kKeys * kStride;
  static constexpr size_t kSmemBytes = kQBytes + kPBytes + 2 * kKvBytes;
};

// Row r of a CTA is handled by warp r % kWarps, in its slot r / kWarps, so that the few rows of a
// decode step spread over all warps.
template <int kHeadDim>
__global__ void __launch_bounds__(kThreads) PagedAttentionKernel(PagedAttentionParams p) {
  using L = Layout<kHeadDim>;
  extern __shared__ __align__(16) unsigned char smem[];
  float* s_q = reinterpret_cast<float*>(smem);                               // [kRows][kHeadDim]
  float* s_p = reinterpret_cast<float*>(smem + L::kQBytes);                  // [kWarps][kRowsPerWarp][kKeys]
  __nv_bfloat16* s_k = reinterpret_cast<__nv_bfloat16*>(smem + L::kQBytes + L::kPBytes);  // [kKeys][kStride]
  __nv_bfloat16* s_v = s_k + kKeys * L::kStride;
  __shared__ int32_t s_token[kRows], s_head[kRows], s_pos[kRows], s_first[kRows];
  __shared__ int32_t s_kmin, s_kmax;

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int32_t seq = p.work_items[3 * blockIdx.x];
  const int32_t token_begin = p.work_items[3 * blockIdx.x + 1];
  const int32_t token_count = p.work_items[3 * blockIdx.x + 2];
  const int32_t kv_head = blockIdx.y;
  const int32_t group = p.num_heads / p.num_kv_heads;
  const int32_t heads_per_cta = min(group, kRows);  // PagedAttentionHeadsPerCta, on the device
  const int64_t q_row_stride = static_cast<int64_t>(p.num_heads) * kHeadDim;

  if (warp == 0) {
    const int r = lane;
    const int32_t local = r / heads_per_cta;
    const int32_t g = static_cast<int32_t>(blockIdx.z) * heads_per_cta + r % heads_per_cta;
    const bool valid = local < token_count && g < group;
    int32_t token = -1, pos = -1, first = INT_MAX;
    if (valid) {
      token = token_begin + local;
      pos = p.positions[token];
      first = p.sliding_window > 0 ? max(0, pos - p.sliding_window + 1) : 0;
    }
    s_token[r] = token;
    s_head[r] = kv_head * group + g;
    s_pos[r] = pos;
    s_first[r] = first;
    const int32_t kmin = __reduce_min_sync(0xffffffffu, first);
    const int32_t kmax = __reduce_max_sync(0xffffffffu, pos);
    if (lane == 0) {
      s_kmin = kmin;
      s_kmax = kmax;
    }
  }
  __syncthreads();
  const int32_t kmin = s_kmin;
  const int32_t kmax = s_kmax;
  if (kmax < 0) return;  // no row in this CTA (uniform)

  // Q rows, scaled so that scores are in log2 units.
  const float q_scale = p.scale * kLog2e;
  for (int i = threadIdx.x; i < kRows * (kHeadDim / 2); i += kThreads) {
    const int r = i / (kHeadDim / 2);
    const int d = 2 * (i % (kHeadDim / 2));
    float2 v = make_float2(0.0f, 0.0f);
    if (s_token[r] >= 0) {
      const __nv_bfloat16* src = p.q + s_token[r] * q_row_stride + static_cast<int64_t>(s_head[r]) * kHeadDim + d;
      v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(src));
      v.x *= q_scale;
      v.y *= q_scale;
    }
    *reinterpret_cast<float2*>(s_q + r * kHeadDim + d) = v;
  }

  bool row_valid[kRowsPerWarp];
  int32_t row_pos[kRowsPerWarp], row_first[kRowsPerWarp];
  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][L::kPairsPerLane][2];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int r = i * kWarps + warp;
    row_valid[i] = s_token[r] >= 0;
    row_pos[i] = s_pos[r];
    row_first[i] = s_first[r];
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int pp = 0; pp < L::kPairsPerLane; ++pp) acc[i][pp][0] = acc[i][pp][1] = 0.0f;
  }

  const int32_t* table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
  float* my_p = s_p + warp * kRowsPerWarp * kKeys;
  constexpr int kChunksPerKey = kHeadDim / 8;  // 16-byte chunks

  for (int32_t key0 = kmin; key0 <= kmax; key0 += kKeys) {
    __syncthreads();  // everyone is done with the previous tile (and s_q is written)
    for (int c = threadIdx.x; c < kKeys * kChunksPerKey; c += kThreads) {
      const int j = c / kChunksPerKey;
      const int d = (c % kChunksPerKey) * 8;
      const int32_t pos = key0 + j;
      uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (pos <= kmax) {
        const int64_t block = table[pos / p.block_size];
        const int64_t base =
            ((block * p.num_kv_heads + kv_head) * p.block_size + pos % p.block_size) * kHeadDim + d;
        kv = *reinterpret_cast<const uint4*>(p.k_cache + base);
        vv = *reinterpret_cast<const uint4*>(p.v_cache + base);
      }
      uint32_t* dk = reinterpret_cast<uint32_t*>(s_k + j * L::kStride + d);
      uint32_t* dv = reinterpret_cast<uint32_t*>(s_v + j * L::kStride + d);
      dk[0] = kv.x; dk[1] = kv.y; dk[2] = kv.z; dk[3] = kv.w;
      dv[0] = vv.x; dv[1] = vv.y; dv[2] = vv.z; dv[3] = vv.w;
    }
    __syncthreads();

    // Scores: lane j scores key key0 + j against this warp's rows.
    float s[kRowsPerWarp];
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) s[i] = 0.0f;
    const __nv_bfloat162* krow = reinterpret_cast<const __nv_bfloat162*>(s_k + lane * L::kStride);
#pragma unroll 4
    for (int d2 = 0; d2 < L::kPairs; ++d2) {
      const float2 kf = __bfloat1622float2(krow[d2]);
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) {
        if (!row_valid[i]) continue;
        const float2 qf = *reinterpret_cast<const float2*>(s_q + (i * kWarps + warp) * kHeadDim + 2 * d2);
        s[i] = fmaf(qf.x, kf.x, fmaf(qf.y, kf.y, s[i]));
      }
    }
    const int32_t key = key0 + lane;
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      if (!row_valid[i]) continue;  // warp-uniform
      const bool visible = key >= row_first[i] && key <= row_pos[i];
      const float si = visible ? s[i] : -INFINITY;
      const float m_new = fmaxf(m[i], WarpMax(si));
      float alpha = 1.0f, pv = 0.0f;
      if (m_new != -INFINITY) {
        alpha = exp2f(m[i] - m_new);  // 0 while m[i] is still -inf
        pv = visible ? exp2f(si - m_new) : 0.0f;
      }
      m[i] = m_new;
      l[i] = l[i] * alpha + pv;
#pragma unroll
      for (int pp = 0; pp < L::kPairsPerLane; ++pp) {
        acc[i][pp][0] *= alpha;
        acc[i][pp][1] *= alpha;
      }
      my_p[i * kKeys + lane] = pv;
    }
    __syncwarp();
    // P @ V: lane owns dim pairs lane + 32 * pp.
#pragma unroll 4
    for (int j = 0; j < kKeys; ++j) {
      const __nv_bfloat162* vrow = reinterpret_cast<const __nv_bfloat162*>(s_v + j * L::kStride);
#pragma unroll
      for (int pp = 0; pp < L::kPairsPerLane; ++pp) {
        const int d2 = lane + 32 * pp;
        if (L::kPairs % 32 != 0 && d2 >= L::kPairs) continue;
        const float2 vf = __bfloat1622float2(vrow[d2]);
#pragma unroll
        for (int i = 0; i < kRowsPerWarp; ++i) {
          if (!row_valid[i]) continue;
          const float pj = my_p[i * kKeys + j];
          acc[i][pp][0] = fmaf(pj, vf.x, acc[i][pp][0]);
          acc[i][pp][1] = fmaf(pj, vf.y, acc[i][pp][1]);
        }
      }
    }
    __syncwarp();
  }

#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    if (!row_valid[i]) continue;
    const int r = i * kWarps + warp;
    const float sum = WarpSum(l[i]);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    __nv_bfloat16* out = p.out + s_token[r] * q_row_stride + static_cast<int64_t>(s_head[r]) * kHeadDim;
#pragma unroll
    for (int pp = 0; pp < L::kPairsPerLane; ++pp) {
      const int d2 = lane + 32 * pp;
      if (L::kPairs % 32 != 0 && d2 >= L::kPairs) continue;
      reinterpret_cast<__nv_bfloat162*>(out)[d2] =
          __floats2bfloat162_rn(acc[i][pp][0] * inv, acc[i][pp][1] * inv);
    }
  }
}

template <int kHeadDim>
cudaError_t Launch(const PagedAttentionParams& p, cudaStream_t stream) {
  using L = Layout<kHeadDim>;
  const int32_t group = p.num_heads / p.num_kv_heads;
  const int32_t heads_per_cta = PagedAttentionHeadsPerCta(group);
  const dim3 grid(p.num_work_items, p.num_kv_heads, (group + heads_per_cta - 1) / heads_per_cta);
  return LaunchKernelWithSmem(false, PagedAttentionKernel<kHeadDim>, grid, dim3(kThreads), L::kSmemBytes, stream, p);
}

}  // namespace

bool PagedAttentionSupportsHeadDim(int32_t head_dim) {
  switch (head_dim) {
    case 32: case 64: case 80: case 96: case 128: case 256: return true;
    default: return false;
  }
}

cudaError_t LaunchPagedAttention(const PagedAttentionParams& p, cudaStream_t stream) {
  if (p.num_kv_heads <= 0 || p.num_heads % p.num_kv_heads != 0) return cudaErrorInvalidValue;
  if (p.num_work_items == 0) return cudaSuccess;
  switch (p.head_dim) {
    case 32: return Launch<32>(p, stream);
    case 64: return Launch<64>(p, stream);
    case 80: return Launch<80>(p, stream);
    case 96: return Launch<96>(p, stream);
    case 128: return Launch<128>(p, stream);
    case 256: return Launch<256>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace tandem::kernels
