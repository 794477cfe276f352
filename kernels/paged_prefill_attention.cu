#include "kernels/paged_prefill_attention.cuh"

#include <climits>
#include <cstddef>

#include "kernels/kernel_utils.cuh"
#include "kernels/tensor_core_utils.cuh"

namespace tandem::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = kPagedPrefillAttentionRows;
constexpr int kMTiles = kRows / (16 * kWarps);  // m16 tiles per warp: each K/V fragment feeds both
constexpr int kKeys = 64;                       // keys per K/V tile
constexpr float kLog2e = 1.4426950408889634f;
static_assert(kRows == 16 * kMTiles * kWarps);

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
  // shared memory per K tile (64 more registers would not fit beside the accumulators).
  static constexpr bool kQInRegisters = kHeadDim <= 64;
  static_assert(kThreads % kChunks == 0 && kKeys % kRowsPerPass == 0 && kRows % kRowsPerPass == 0);
};

// Fragment layouts (PTX ISA, mma.m16n8k16): lane = 4 * g + t. An accumulator c[4] of a 16x8 tile
// holds (row g, cols 2t, 2t+1) in c[0..1] and (row g + 8, same cols) in c[2..3]. Warp w owns tile
// rows 32w..32w+31 as two m16 tiles; this thread's rows are 32w + 16mt + g + 8i (mt, i in {0, 1}).
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
  for (int r = tid; r < kRows; r += kThreads) {
    const int32_t local = r / group;
    int32_t pos = -1, first = INT_MAX;
    int64_t offset = -1;
    if (local < token_count) {
      const int32_t token = token_begin + local;
      pos = p.positions[token];
      first = p.sliding_window > 0 ? max(0, pos - p.sliding_window + 1) : 0;
      offset = token * row_stride + static_cast<int64_t>(kv_head * group + r % group) * kHeadDim;
    }
    s_offset[r] = offset;
    s_pos[r] = pos;
    s_first[r] = first;
    const int32_t lo = __reduce_min_sync(0xffffffffu, first);
    const int32_t hi = __reduce_max_sync(0xffffffffu, pos);
    if (lane == 0) {
      s_range[0][r / 32] = lo;
      s_range[1][r / 32] = hi;
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
#pragma unroll
  for (int k = 0; k < kRows / T::kRowsPerPass; ++k) {
    const int r = row0 + k * T::kRowsPerPass;
    const int64_t offset = s_offset[r];
    CpAsync16(SmemAddr(s_q + r * T::kStride + chunk * 8), p.q + (offset < 0 ? 0 : offset + chunk * 8), offset >= 0);
  }
  const int32_t* table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
  const int64_t block_elems = static_cast<int64_t>(p.num_kv_heads) * p.block_size * kHeadDim;
  const __nv_bfloat16* k_head = p.k_cache + static_cast<int64_t>(kv_head) * p.block_size * kHeadDim + chunk * 8;
  const __nv_bfloat16* v_head = p.v_cache + static_cast<int64_t>(kv_head) * p.block_size * kHeadDim + chunk * 8;
  // Power-of-two block sizes (the usual ones) split a position with a shift instead of a division.
  const int32_t block_shift = (p.block_size & (p.block_size - 1)) == 0 ? __ffs(p.block_size) - 1 : -1;
  // Keys key0 .. key0 + kKeys - 1 into buffer `buf`; keys past kmax are zero-filled, never read.
  auto load_kv = [&](int32_t key0, int buf) {
#pragma unroll
    for (int k = 0; k < kKeys / T::kRowsPerPass; ++k) {
      const int r = row0 + k * T::kRowsPerPass;
      const int32_t pos = key0 + r;
      const bool valid = pos <= kmax;
      int64_t src = 0;
      if (valid) {
        const int32_t block = block_shift >= 0 ? pos >> block_shift : pos / p.block_size;
        src = table[block] * block_elems + static_cast<int64_t>(pos - block * p.block_size) * kHeadDim;
      }
      const uint32_t dst = SmemAddr(s_k + (buf * kKeys + r) * T::kStride + chunk * 8);
      CpAsync16(dst, k_head + src, valid);
      CpAsync16(dst + 2 * T::kKvElems * sizeof(__nv_bfloat16), v_head + src, valid);  // same row of s_v
    }
  };
  load_kv(kmin, 0);
  CpAsyncCommit();  // Q and the first K/V tile

  const int g = lane >> 2;
  const int t = lane & 3;
  int32_t lo_first = INT_MAX, hi_first = -1, lo_pos = INT_MAX, hi_pos = -1;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = warp * 16 * kMTiles + mt * 16 + g + 8 * i;
      lo_first = min(lo_first, s_first[r]);
      hi_first = max(hi_first, s_first[r]);
      lo_pos = min(lo_pos, s_pos[r]);
      hi_pos = max(hi_pos, s_pos[r]);
    }
  }
  // The warp's rows: keys outside [lo_first, hi_pos] are masked for all of them, keys inside
  // [hi_first, lo_pos] visible to all (padding rows have pos -1, first INT_MAX).
  lo_first = __reduce_min_sync(0xffffffffu, lo_first);
  hi_first = __reduce_max_sync(0xffffffffu, hi_first);
  lo_pos = __reduce_min_sync(0xffffffffu, lo_pos);
  hi_pos = __reduce_max_sync(0xffffffffu, hi_pos);

  const float scale_log2 = p.scale * kLog2e;
  float o[kMTiles][kHeadDim / 8][4];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int n = 0; n < kHeadDim / 8; ++n) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.0f;
  }
  float m[kMTiles][2], l[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.0f;
  uint32_t q_frag[kMTiles][T::kQInRegisters ? kHeadDim / 16 : 1][4];

  // ldmatrix row addresses (lane l supplies row l % 8 of matrix l / 8).
  const int a_row = warp * 16 * kMTiles + (lane & 15), a_col = (lane >> 4) * 8;    // Q: A operand
  const int k_row = (lane & 7) + (lane >> 4) * 8, k_col = ((lane >> 3) & 1) * 8;  // K: B, two n-tiles
  const int v_row = (lane & 7) + ((lane >> 3) & 1) * 8, v_col = (lane >> 4) * 8;  // V: B (trans)
  const uint32_t q_base = SmemAddr(s_q + a_row * T::kStride + a_col);
  constexpr uint32_t kQTileBytes = 16 * T::kStride * 2;  // one m16 tile of Q in shared memory

  // Tile it + 1 is loaded while tile it's scores go through the softmax and P V (the buffer it
  // fills was released by the barrier that ended iteration it - 1).
  const int num_tiles = (kmax - kmin) / kKeys + 1;
  for (int it = 0; it < num_tiles; ++it) {
    const int32_t key0 = kmin + it * kKeys;
    const int buf = it & 1;
    CpAsyncWait<0>();
    __syncthreads();
    if constexpr (T::kQInRegisters) {
      if (it == 0) {
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
          for (int kd = 0; kd < kHeadDim / 16; ++kd) LdMatrixX4(q_frag[mt][kd], q_base + mt * kQTileBytes + kd * 32);
        }
      }
    }
    const bool skip = key0 > hi_pos || key0 + kKeys - 1 < lo_first;  // warp-uniform
    // S = Q K^T: 32 rows x 64 keys, per m16 tile 8 n-tiles of 8 keys.
    float s[kMTiles][kKeys / 8][4];
    if (!skip) {
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int j = 0; j < kKeys / 8; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
      }
      const uint32_t k_base = SmemAddr(s_k + (buf * kKeys + k_row) * T::kStride + k_col);
#pragma unroll
      for (int kd = 0; kd < kHeadDim / 16; ++kd) {
        uint32_t a[kMTiles][4];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          if constexpr (T::kQInRegisters) {
#pragma unroll
            for (int x = 0; x < 4; ++x) a[mt][x] = q_frag[mt][kd][x];
          } else {
            LdMatrixX4(a[mt], q_base + mt * kQTileBytes + kd * 32);
          }
        }
#pragma unroll
        for (int jj = 0; jj < kKeys / 16; ++jj) {
          uint32_t b[4];
          LdMatrixX4(b, k_base + (jj * 16 * T::kStride + kd * 16) * 2);
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            Mma(s[mt][2 * jj], a[mt], b[0], b[1]);
            Mma(s[mt][2 * jj + 1], a[mt], b[2], b[3]);
          }
        }
      }
    }
    if (it + 1 < num_tiles) {
      load_kv(key0 + kKeys, buf ^ 1);
      CpAsyncCommit();
    }
    if (!skip) {
      // Mask unless every key of the tile is visible to every row of the warp.
      if (!(key0 >= hi_first && key0 + kKeys - 1 <= lo_pos)) {
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          int32_t row_pos[2], row_first[2];  // from shared memory: only diagonal tiles need them
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            row_pos[i] = s_pos[warp * 16 * kMTiles + mt * 16 + g + 8 * i];
            row_first[i] = s_first[warp * 16 * kMTiles + mt * 16 + g + 8 * i];
          }
#pragma unroll
          for (int j = 0; j < kKeys / 8; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int32_t key = key0 + j * 8 + 2 * t + (e & 1);
              const int i = e >> 1;
              if (key < row_first[i] || key > row_pos[i]) s[mt][j][e] = -INFINITY;
            }
          }
        }
      }
      // Online softmax in log2 units; a row that has seen no key yet keeps m = -inf and l = 0.
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          float mx = -INFINITY;
#pragma unroll
          for (int j = 0; j < kKeys / 8; ++j) mx = fmaxf(mx, fmaxf(s[mt][j][2 * i], s[mt][j][2 * i + 1]));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          const float m_new = fmaxf(m[mt][i], mx);
          const float base = m_new == -INFINITY ? 0.0f : m_new * scale_log2;
          const float alpha = Exp2(m[mt][i] * scale_log2 - base);
          m[mt][i] = m_new;
          float sum = 0.0f;
#pragma unroll
          for (int j = 0; j < kKeys / 8; ++j) {
            s[mt][j][2 * i] = Exp2(fmaf(s[mt][j][2 * i], scale_log2, -base));
            s[mt][j][2 * i + 1] = Exp2(fmaf(s[mt][j][2 * i + 1], scale_log2, -base));
            sum += s[mt][j][2 * i] + s[mt][j][2 * i + 1];
          }
          l[mt][i] = l[mt][i] * alpha + sum;  // this thread's columns; the quad is summed at the end
#pragma unroll
          for (int n = 0; n < kHeadDim / 8; ++n) {
            o[mt][n][2 * i] *= alpha;
            o[mt][n][2 * i + 1] *= alpha;
          }
        }
      }
      // O += P V: P (bf16) straight from the S accumulators as the A operand, 16 keys per step.
      const uint32_t v_base = SmemAddr(s_v + (buf * kKeys + v_row) * T::kStride + v_col);
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        uint32_t a[kMTiles][4];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          a[mt][0] = PackBf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
          a[mt][1] = PackBf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
          a[mt][2] = PackBf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
          a[mt][3] = PackBf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int nn = 0; nn < kHeadDim / 16; ++nn) {
          uint32_t b[4];
          LdMatrixX4Trans(b, v_base + (kk * 16 * T::kStride + nn * 16) * 2);
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            Mma(o[mt][2 * nn], a[mt], b[0], b[1]);
            Mma(o[mt][2 * nn + 1], a[mt], b[2], b[3]);
          }
        }
      }
    }
    __syncthreads();  // the buffer this tile used is refilled next iteration
  }

#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float sum = l[mt][i];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      const int64_t offset = s_offset[warp * 16 * kMTiles + mt * 16 + g + 8 * i];
      if (offset < 0) continue;
      __nv_bfloat16* out = p.out + offset + 2 * t;
#pragma unroll
      for (int n = 0; n < kHeadDim / 8; ++n) {
        *reinterpret_cast<__nv_bfloat162*>(out + n * 8) =
            __floats2bfloat162_rn(o[mt][n][2 * i] * inv, o[mt][n][2 * i + 1] * inv);
      }
    }
  }
}

template <int kHeadDim>
cudaError_t Launch(const PagedPrefillAttentionParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned int>(p.num_work_items), static_cast<unsigned int>(p.num_kv_heads));
  return LaunchKernelWithSmem(false, PagedPrefillAttentionKernel<kHeadDim>, grid, dim3(kThreads),
                              Tile<kHeadDim>::kSmemBytes, stream, p);
}

}  // namespace

bool PagedPrefillAttentionSupports(int32_t head_dim, int32_t group) {
  return (head_dim == 64 || head_dim == 128) && group >= 1 && group <= kPagedPrefillAttentionRows;
}

bool PagedPrefillAttentionParamsValid(const PagedPrefillAttentionParams& p) {
  return p.num_kv_heads > 0 && p.num_heads % p.num_kv_heads == 0 &&
         PagedPrefillAttentionSupports(p.head_dim, p.num_heads / p.num_kv_heads) && p.block_size > 0;
}

cudaError_t LaunchPagedPrefillAttention(const PagedPrefillAttentionParams& p, cudaStream_t stream) {
  if (!PagedPrefillAttentionParamsValid(p)) return cudaErrorInvalidValue;
  if (p.num_work_items == 0) return cudaSuccess;
  switch (p.head_dim) {
    case 64: return Launch<64>(p, stream);
    case 128: return Launch<128>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace tandem::kernels
