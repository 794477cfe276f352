#include "kernels/paged_prefill_attention.cuh"

#include <climits>
#include <cstddef>

namespace tandem::kernels {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = kPagedPrefillAttentionRows;  // 16 per warp: one m16 tile
constexpr int kKeys = 64;                          // keys per K/V tile
constexpr float kLog2e = 1.4426950408889634f;
static_assert(kRows == 16 * kWarps);

template <int kHeadDim>
struct Tile {
  // Shared-memory rows padded by 16 bytes: the 8 rows one ldmatrix phase reads fall in 8 distinct
  // 16-byte bank groups, and every row stays 16-byte aligned for cp.async.
  static constexpr int kStride = kHeadDim + 8;
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
  static constexpr int kRowsPerPass = kThreads / kChunks;
  static constexpr int kQElems = kRows * kStride;
  static constexpr int kKvElems = kKeys * kStride;
  // Q, then K[2], then V[2].
  static constexpr size_t kSmemBytes = sizeof(__nv_bfloat16) * (kQElems + 4 * kKvElems);
  // Q fragments stay in registers for the whole tile at head dim 64; at 128 they are re-read from
  // shared memory per K tile (32 more registers would halve the CTAs per SM).
  static constexpr bool kQInRegisters = kHeadDim <= 64;
  static_assert(kThreads % kChunks == 0 && kKeys % kRowsPerPass == 0 && kRows % kRowsPerPass == 0);
};

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, zero-filled when !valid (src is then not read).
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c += a (16x16, row) * b (16x8, col), bf16 in, fp32 accumulate.
__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Fragment layouts (PTX ISA, mma.m16n8k16): lane = 4 * g + t. An accumulator c[4] of a 16x8 tile
// holds (row g, cols 2t, 2t+1) in c[0..1] and (row g + 8, same cols) in c[2..3]. Warp w owns tile
// rows 16w..16w+15; this thread's rows are 16w + g (index 0) and 16w + g + 8 (index 1).
template <int kHeadDim>
__global__ void __launch_bounds__(kThreads, 2) PagedPrefillAttentionKernel(PagedPrefillAttentionParams p) {
  using T = Tile<kHeadDim>;
  extern __shared__ __align__(16) unsigned char smem[];
  __nv_bfloat16* s_q = reinterpret_cast<__nv_bfloat16*>(smem);  // [kRows][kStride]
  __nv_bfloat16* s_k = s_q + T::kQElems;                         // [2][kKeys][kStride]
  __nv_bfloat16* s_v = s_k + 2 * T::kKvElems;                    // [2][kKeys][kStride]
  __shared__ int64_t s_offset[kRows];  // element offset of the row in q and out; -1: padding row
  __shared__ int32_t s_pos[kRows], s_first[kRows];
  __shared__ int32_t s_range[2][kRows / 32];

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  // The last items of a sequence see the most keys: start them first.
  const int32_t item = p.num_work_items - 1 - static_cast<int32_t>(blockIdx.x);
  const int32_t seq = p.work_items[3 * item];
  const int32_t token_begin = p.work_items[3 * item + 1];
  const int32_t token_count = p.work_items[3 * item + 2];
  const int32_t kv_head = blockIdx.y;
  const int32_t group = p.num_heads / p.num_kv_heads;
  const int64_t row_stride = static_cast<int64_t>(p.num_heads) * kHeadDim;

  // Tile row r is query head r % group of token r / group.
  if (tid < kRows) {
    const int32_t local = tid / group;
    int32_t pos = -1, first = INT_MAX;
    int64_t offset = -1;
    if (local < token_count) {
      const int32_t token = token_begin + local;
      pos = p.positions[token];
      first = p.sliding_window > 0 ? max(0, pos - p.sliding_window + 1) : 0;
      offset = token * row_stride + static_cast<int64_t>(kv_head * group + tid % group) * kHeadDim;
    }
    s_offset[tid] = offset;
    s_pos[tid] = pos;
    s_first[tid] = first;
    const int32_t lo = __reduce_min_sync(0xffffffffu, first);
    const int32_t hi = __reduce_max_sync(0xffffffffu, pos);
    if (lane == 0) {
      s_range[0][warp] = lo;
      s_range[1][warp] = hi;
    }
  }
  __syncthreads();
  int32_t kmin = INT_MAX, kmax = -1;  // keys any row of the CTA sees
#pragma unroll
  for (int w = 0; w < kRows / 32; ++w) {
    kmin = min(kmin, s_range[0][w]);
    kmax = max(kmax, s_range[1][w]);
  }
  if (kmax < 0) return;  // no row (uniform over the CTA)

  // Loads: thread tid moves 16-byte chunk tid % kChunks of rows tid / kChunks + k * kRowsPerPass.
  const int chunk = tid % T::kChunks;
  const int row0 = tid / T::kChunks;
  for (int r = row0; r < kRows; r += T::kRowsPerPass) {
    const int64_t offset = s_offset[r];
    CpAsync16(SmemAddr(s_q + r * T::kStride + chunk * 8), p.q + (offset < 0 ? 0 : offset + chunk * 8), offset >= 0);
  }
  const int32_t* table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
  const int64_t block_elems = static_cast<int64_t>(p.num_kv_heads) * p.block_size * kHeadDim;
  const int64_t head_elems = static_cast<int64_t>(kv_head) * p.block_size * kHeadDim;
  // Keys key0 .. key0 + kKeys - 1 into buffer `buf`; keys past kmax are zero-filled, never read.
  auto load_kv = [&](int32_t key0, int buf) {
#pragma unroll
    for (int r = row0; r < kKeys; r += T::kRowsPerPass) {
      const int32_t pos = key0 + r;
      const bool valid = pos <= kmax;
      int64_t src = 0;
      if (valid) {
        src = table[pos / p.block_size] * block_elems + head_elems +
              static_cast<int64_t>(pos % p.block_size) * kHeadDim + chunk * 8;
      }
      const int dst = (buf * kKeys + r) * T::kStride + chunk * 8;
      CpAsync16(SmemAddr(s_k + dst), p.k_cache + src, valid);
      CpAsync16(SmemAddr(s_v + dst), p.v_cache + src, valid);
    }
  };
  load_kv(kmin, 0);
  CpAsyncCommit();  // Q and the first K/V tile

  const int g = lane >> 2;
  const int t = lane & 3;
  int32_t row_pos[2], row_first[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    row_pos[i] = s_pos[warp * 16 + g + 8 * i];
    row_first[i] = s_first[warp * 16 + g + 8 * i];
  }
  // The warp's rows: keys outside [lo_first, hi_pos] are masked for all of them, keys inside
  // [hi_first, lo_pos] visible to all (padding rows have pos -1, first INT_MAX).
  const int32_t lo_first = __reduce_min_sync(0xffffffffu, min(row_first[0], row_first[1]));
  const int32_t hi_first = __reduce_max_sync(0xffffffffu, max(row_first[0], row_first[1]));
  const int32_t lo_pos = __reduce_min_sync(0xffffffffu, min(row_pos[0], row_pos[1]));
  const int32_t hi_pos = __reduce_max_sync(0xffffffffu, max(row_pos[0], row_pos[1]));

  const float scale_log2 = p.scale * kLog2e;
  float o[kHeadDim / 8][4];
#pragma unroll
  for (int n = 0; n < kHeadDim / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  uint32_t q_frag[T::kQInRegisters ? kHeadDim / 16 : 1][4];

  // ldmatrix row addresses (lane l supplies row l % 8 of matrix l / 8).
  const int a_row = warp * 16 + (lane & 15), a_col = (lane >> 4) * 8;          // Q: A operand
  const int k_row = (lane & 7) + (lane >> 4) * 8, k_col = ((lane >> 3) & 1) * 8;  // K: B, two n-tiles
  const int v_row = (lane & 7) + ((lane >> 3) & 1) * 8, v_col = (lane >> 4) * 8;  // V: B (trans)
  const uint32_t q_base = SmemAddr(s_q + a_row * T::kStride + a_col);

  const int num_tiles = (kmax - kmin) / kKeys + 1;
  for (int it = 0; it < num_tiles; ++it) {
    const int32_t key0 = kmin + it * kKeys;
    const int buf = it & 1;
    if (it + 1 < num_tiles) {
      load_kv(key0 + kKeys, buf ^ 1);  // that buffer was released by the last iteration's barrier
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    if constexpr (T::kQInRegisters) {
      if (it == 0) {
#pragma unroll
        for (int kd = 0; kd < kHeadDim / 16; ++kd) LdMatrixX4(q_frag[kd], q_base + kd * 32);
      }
    }
    const bool skip = key0 > hi_pos || key0 + kKeys - 1 < lo_first;  // warp-uniform
    if (!skip) {
      // S = Q K^T: 16 rows x 64 keys, 8 n-tiles of 8 keys.
      float s[kKeys / 8][4];
#pragma unroll
      for (int j = 0; j < kKeys / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
      const uint32_t k_base = SmemAddr(s_k + (buf * kKeys + k_row) * T::kStride + k_col);
#pragma unroll
      for (int kd = 0; kd < kHeadDim / 16; ++kd) {
        uint32_t a[4];
        if constexpr (T::kQInRegisters) {
#pragma unroll
          for (int x = 0; x < 4; ++x) a[x] = q_frag[kd][x];
        } else {
          LdMatrixX4(a, q_base + kd * 32);
        }
#pragma unroll
        for (int jj = 0; jj < kKeys / 16; ++jj) {
          uint32_t b[4];
          LdMatrixX4(b, k_base + (jj * 16 * T::kStride + kd * 16) * 2);
          Mma(s[2 * jj], a, b[0], b[1]);
          Mma(s[2 * jj + 1], a, b[2], b[3]);
        }
      }
      // Mask unless every key of the tile is visible to every row of the warp.
      if (!(key0 >= hi_first && key0 + kKeys - 1 <= lo_pos)) {
#pragma unroll
        for (int j = 0; j < kKeys / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int32_t key = key0 + j * 8 + 2 * t + (e & 1);
            const int i = e >> 1;
            if (key < row_first[i] || key > row_pos[i]) s[j][e] = -INFINITY;
          }
        }
      }
      // Online softmax in log2 units; a row that has seen no key yet keeps m = -inf and l = 0.
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < kKeys / 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * i], s[j][2 * i + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[i], mx);
        const float base = m_new == -INFINITY ? 0.0f : m_new * scale_log2;
        const float alpha = exp2f(m[i] * scale_log2 - base);
        m[i] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < kKeys / 8; ++j) {
          s[j][2 * i] = exp2f(fmaf(s[j][2 * i], scale_log2, -base));
          s[j][2 * i + 1] = exp2f(fmaf(s[j][2 * i + 1], scale_log2, -base));
          sum += s[j][2 * i] + s[j][2 * i + 1];
        }
        l[i] = l[i] * alpha + sum;  // this thread's columns; the quad is summed at the end
#pragma unroll
        for (int n = 0; n < kHeadDim / 8; ++n) {
          o[n][2 * i] *= alpha;
          o[n][2 * i + 1] *= alpha;
        }
      }
      // O += P V: P (bf16) straight from the S accumulators as the A operand, 16 keys per step.
      const uint32_t v_base = SmemAddr(s_v + (buf * kKeys + v_row) * T::kStride + v_col);
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        const uint32_t a[4] = {PackBf16(s[2 * kk][0], s[2 * kk][1]), PackBf16(s[2 * kk][2], s[2 * kk][3]),
                               PackBf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                               PackBf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int nn = 0; nn < kHeadDim / 16; ++nn) {
          uint32_t b[4];
          LdMatrixX4Trans(b, v_base + (kk * 16 * T::kStride + nn * 16) * 2);
          Mma(o[2 * nn], a, b[0], b[1]);
          Mma(o[2 * nn + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // the buffer this tile used is refilled next iteration
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float sum = l[i];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    const int64_t offset = s_offset[warp * 16 + g + 8 * i];
    if (offset < 0) continue;
    __nv_bfloat16* out = p.out + offset + 2 * t;
#pragma unroll
    for (int n = 0; n < kHeadDim / 8; ++n) {
      *reinterpret_cast<__nv_bfloat162*>(out + n * 8) = __floats2bfloat162_rn(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
    }
  }
}

template <int kHeadDim>
cudaError_t Launch(const PagedPrefillAttentionParams& p, cudaStream_t stream) {
  constexpr size_t kBytes = Tile<kHeadDim>::kSmemBytes;
  const cudaError_t err = cudaFuncSetAttribute(PagedPrefillAttentionKernel<kHeadDim>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kBytes));
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned int>(p.num_work_items), static_cast<unsigned int>(p.num_kv_heads));
  PagedPrefillAttentionKernel<kHeadDim><<<grid, kThreads, kBytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

bool PagedPrefillAttentionSupports(int32_t head_dim, int32_t group) {
  return (head_dim == 64 || head_dim == 128) && group >= 1 && group <= kPagedPrefillAttentionRows;
}

cudaError_t LaunchPagedPrefillAttention(const PagedPrefillAttentionParams& p, cudaStream_t stream) {
  if (p.num_kv_heads <= 0 || p.num_heads % p.num_kv_heads != 0 ||
      !PagedPrefillAttentionSupports(p.head_dim, p.num_heads / p.num_kv_heads) || p.block_size <= 0) {
    return cudaErrorInvalidValue;
  }
  if (p.num_work_items == 0) return cudaSuccess;
  switch (p.head_dim) {
    case 64: return Launch<64>(p, stream);
    case 128: return Launch<128>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace tandem::kernels
