#include "kernels/paged_decode_attention.cuh"

#include <algorithm>

#include "kernels/kernel_utils.cuh"

namespace tandem::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr float kLog2e = 1.4426950408889634f;
constexpr int kMinKeysPerSplit = 64;

__device__ __forceinline__ void Bf16x8ToFloat(const uint4& raw, float (&f)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}

// exp2(m - m_ref), 0 for an empty state (m = -inf).
__device__ __forceinline__ float Rescale(float m, float m_ref) { return m == -INFINITY ? 0.0f : exp2f(m - m_ref); }

// kD: head dim; kG: query heads per KV head this instance holds (the runtime group is <= kG).
// Lanes form subgroups of kL = kD / 8 lanes; a subgroup reads one key row (16 bytes per lane) and
// keeps its own online-softmax state for the 8 dims its lanes own; states merge at the end.
template <int kD, int kG>
__global__ void __launch_bounds__(kThreads) PagedDecodeAttentionKernel(PagedDecodeAttentionParams p) {
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

  const int32_t pos = p.positions[seq];
  const int32_t first = p.sliding_window > 0 ? max(0, pos - p.sliding_window + 1) : 0;
  // The sequence's own keys are split (at least kMinKeysPerSplit each), so the grid can be fixed
  // (a captured graph) while lengths vary: splits past the sequence's keys are empty, and their
  // partial state (m = -inf, l = 0) weighs nothing in the combine.
  const int32_t len = pos + 1 - first;
  const int32_t split_len = max(kMinKeysPerSplit, (len + p.num_splits - 1) / p.num_splits);
  const int32_t r0 = first + split * split_len;
  const int32_t r1 = min(pos + 1, r0 + split_len);  // keys [r0, r1), empty when r0 > pos

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

  // Merge the warps; write the result (one split) or this split's partial state.
  for (int i = threadIdx.x; i < group * kD; i += kThreads) {
    const int h = i / kD;
    const int d = i % kD;
    float m_all = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m_all = fmaxf(m_all, s_m[w][h]);
    float a = 0.0f, sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = Rescale(s_m[w][h], m_all);
      a += s_acc[w][h][d] * f;
      sum += s_l[w][h] * f;
    }
    const int32_t head = kv_head * group + h;
    if (p.num_splits == 1) {
      p.out[(static_cast<int64_t>(seq) * p.num_heads + head) * kD + d] =
          __float2bfloat16_rn(sum > 0.0f ? a / sum : 0.0f);
    } else {
      float* part = p.partial + ((static_cast<int64_t>(seq) * p.num_heads + head) * p.num_splits + split) * (kD + 2);
      part[d] = a;
      if (d == 0) {
        part[kD] = m_all;
        part[kD + 1] = sum;
      }
    }
  }
}

// One CTA per (sequence, head), one thread per dim: combines the splits' partial states.
template <int kD>
__global__ void __launch_bounds__(kD) CombineSplitsKernel(PagedDecodeAttentionParams p) {
  const int64_t row = blockIdx.x;  // seq * num_heads + head
  const float* part = p.partial + row * p.num_splits * (kD + 2);
  float m_all = -INFINITY;
  for (int s = 0; s < p.num_splits; ++s) m_all = fmaxf(m_all, part[s * (kD + 2) + kD]);
  float a = 0.0f, sum = 0.0f;
  for (int s = 0; s < p.num_splits; ++s) {
    const float* ps = part + s * (kD + 2);
    const float f = Rescale(ps[kD], m_all);
    a += ps[threadIdx.x] * f;
    sum += ps[kD + 1] * f;
  }
  p.out[row * kD + threadIdx.x] = __float2bfloat16_rn(sum > 0.0f ? a / sum : 0.0f);
}

template <int kD, int kG>
cudaError_t Launch(const PagedDecodeAttentionParams& p, cudaStream_t stream) {
  const dim3 grid(p.num_splits, p.num_kv_heads, p.num_seqs);
  PagedDecodeAttentionKernel<kD, kG><<<grid, kThreads, 0, stream>>>(p);
  if (p.num_splits > 1) {
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    CombineSplitsKernel<kD><<<static_cast<unsigned int>(p.num_seqs) * p.num_heads, kD, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

template <int kD>
cudaError_t LaunchForHeadDim(const PagedDecodeAttentionParams& p, cudaStream_t stream) {
  const int32_t group = p.num_heads / p.num_kv_heads;
  if (group <= 1) return Launch<kD, 1>(p, stream);
  if (group <= 2) return Launch<kD, 2>(p, stream);
  if (group <= 4) return Launch<kD, 4>(p, stream);
  return Launch<kD, 8>(p, stream);
}

}  // namespace

bool PagedDecodeAttentionSupports(int32_t head_dim, int32_t group) {
  return (head_dim == 64 || head_dim == 128 || head_dim == 256) && group >= 1 && group <= 8;
}

int32_t PagedDecodeAttentionSplits(int32_t num_seqs, int32_t num_kv_heads, int32_t max_context, int32_t num_sms) {
  const int64_t base = std::max<int64_t>(1, static_cast<int64_t>(num_seqs) * num_kv_heads);
  const int64_t want = (2LL * num_sms + base - 1) / base;
  const int64_t by_length = std::max<int64_t>(1, (max_context + kMinKeysPerSplit - 1) / kMinKeysPerSplit);
  return static_cast<int32_t>(std::max<int64_t>(1, std::min(want, by_length)));
}

size_t PagedDecodeAttentionPartialFloats(int32_t num_seqs, int32_t num_heads, int32_t head_dim, int32_t num_splits) {
  if (num_splits <= 1) return 0;
  return static_cast<size_t>(num_seqs) * num_heads * num_splits * (head_dim + 2);
}

cudaError_t LaunchPagedDecodeAttention(const PagedDecodeAttentionParams& p, cudaStream_t stream) {
  if (p.num_kv_heads <= 0 || p.num_heads % p.num_kv_heads != 0 || p.num_splits < 1) return cudaErrorInvalidValue;
  if (!PagedDecodeAttentionSupports(p.head_dim, p.num_heads / p.num_kv_heads)) return cudaErrorInvalidValue;
  if (p.num_splits > 1 && p.partial == nullptr) return cudaErrorInvalidValue;
  if (p.num_seqs == 0) return cudaSuccess;
  switch (p.head_dim) {
    case 64: return LaunchForHeadDim<64>(p, stream);
    case 128: return LaunchForHeadDim<128>(p, stream);
    case 256: return LaunchForHeadDim<256>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace tandem::kernels
