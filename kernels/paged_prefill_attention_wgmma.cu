#include "kernels/paged_prefill_attention_wgmma.cuh"

#include <climits>
#include <cstddef>

#include "kernels/kernel_utils.cuh"
#include "kernels/tensor_core_utils.cuh"
#include "kernels/wgmma_utils.cuh"

namespace tandem::kernels {
namespace {

constexpr int kWarpgroups = 2;
constexpr int kThreads = 128 * kWarpgroups;
constexpr int kRows = kPagedPrefillAttentionRows;  // 64 per warpgroup
constexpr int kKeys = 128;                         // keys per K/V tile
constexpr int kStages = 3;                         // K and V tiles in shared memory, each
constexpr float kLog2e = 1.4426950408889634f;
static_assert(kRows == 64 * kWarpgroups);

template <int kHeadDim>
struct WgTile {
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
  static constexpr int kRowsPerPass = kThreads / kChunks;
  // K/V loads: each thread moves one 16-byte chunk of kRunKeys consecutive keys (one block-table
  // lookup per run where runs never straddle a cache block).
  static constexpr int kRunKeys = kKeys / kRowsPerPass;
  // Rows are split into 64-element (128-byte) column blocks, each block a swizzled tile of its own.
  static constexpr uint32_t kQBlockBytes = kRows * 128;
  static constexpr uint32_t kKvBlockBytes = kKeys * 128;
  static constexpr uint32_t kQBytes = kHeadDim / 64 * kQBlockBytes;
  static constexpr uint32_t kKvBytes = kHeadDim / 64 * kKvBlockBytes;
  // Per row: the row of q / out as [tokens * heads][head_dim] (-1: padding), its position and first
  // visible key; per warp of rows: the least first and the largest position.
  static constexpr uint32_t kRowInfoBytes = 3 * kRows * sizeof(int32_t) + 2 * (kRows / 32) * sizeof(int32_t);
  // Up to 1024 bytes that align the swizzle pattern, Q, K[kStages], V[kStages], the row info.
  static constexpr size_t kSmemBytes = 1024 + kQBytes + 2 * kStages * kKvBytes + kRowInfoBytes;
  static constexpr int kAccum = kHeadDim / 2;  // O accumulator floats per thread
  static_assert(kThreads % kChunks == 0 && kKeys % kRowsPerPass == 0 && kRows % kRowsPerPass == 0);
};

// Byte offset of (row, 16-byte chunk) in a tile whose 64-element column blocks are `block_bytes` apart.
__device__ __forceinline__ uint32_t TileOffset(int row, int chunk, uint32_t block_bytes) {
  return static_cast<uint32_t>(chunk >> 3) * block_bytes + Swizzle128Offset(row, chunk & 7);
}

// Max / sum of v[0 .. kWidth * 2) into v[0], as a tree (short dependency chains).
template <int kWidth, int kN>
__device__ __forceinline__ void TreeMax(float (&v)[kN]) {
#pragma unroll
  for (int j = 0; j < kWidth; ++j) v[j] = fmaxf(v[j], v[j + kWidth]);
  if constexpr (kWidth > 1) TreeMax<kWidth / 2>(v);
}
template <int kWidth, int kN>
__device__ __forceinline__ void TreeSum(float (&v)[kN]) {
#pragma unroll
  for (int j = 0; j < kWidth; ++j) v[j] += v[j + kWidth];
  if constexpr (kWidth > 1) TreeSum<kWidth / 2>(v);
}

__device__ __forceinline__ void PvWgmma(float (&o)[32], const uint32_t (&a)[4], uint64_t desc) {
  WgmmaRsM64N64K16TransB(o, a, desc, true);
}
__device__ __forceinline__ void PvWgmma(float (&o)[64], const uint32_t (&a)[4], uint64_t desc) {
  WgmmaRsM64N128K16TransB(o, a, desc, true);
}

// Warpgroup wg owns tile rows 64 wg .. 64 wg + 63; in it warp w rows 16 w .. 16 w + 15, and this
// thread (lane 4 g + t) rows 64 wg + 16 w + g + 8 i (i in {0, 1}): the accumulator layout of
// kernels/wgmma_utils.cuh.
template <int kHeadDim>
__global__ void __launch_bounds__(kThreads, 1) PagedPrefillAttentionWgmmaKernel(PagedPrefillAttentionParams p) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // built for sm_90a only (CMakeLists.txt); never launched elsewhere
#else
  using T = WgTile<kHeadDim>;
  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t q_smem = (SmemAddr(smem) + 1023u) & ~1023u;
  const uint32_t k_smem = q_smem + T::kQBytes;             // K[stage]: k_smem + stage * kKvBytes
  const uint32_t v_smem = k_smem + kStages * T::kKvBytes;  // V[stage]: v_smem + stage * kKvBytes
  int32_t* s_qrow = reinterpret_cast<int32_t*>(smem + (v_smem + kStages * T::kKvBytes - SmemAddr(smem)));
  int32_t* s_pos = s_qrow + kRows;
  int32_t* s_first = s_pos + kRows;
  int32_t* s_range = s_first + kRows;  // [2][kRows / 32]

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int wg = tid >> 7;
  const int wg_warp = (tid >> 5) & 3;
  // The last items of a sequence see the most keys: start them first.
  const int32_t item = p.num_work_items - 1 - static_cast<int32_t>(blockIdx.x);
  const int32_t seq = p.work_items[3 * item];
  const int32_t token_begin = p.work_items[3 * item + 1];
  const int32_t token_count = p.work_items[3 * item + 2];
  const int32_t kv_head = blockIdx.y;
  const int32_t group = p.num_heads / p.num_kv_heads;

  // Tile row r is query head r % group of token r / group (warps 0..3 cover the 128 rows).
  if (tid < kRows) {
    const int r = tid;
    const int32_t local = r / group;
    int32_t pos = -1, first = INT_MAX, qrow = -1;
    if (local < token_count) {
      const int32_t token = token_begin + local;
      pos = p.positions[token];
      first = p.sliding_window > 0 ? max(0, pos - p.sliding_window + 1) : 0;
      qrow = token * p.num_heads + kv_head * group + r % group;
    }
    s_qrow[r] = qrow;
    s_pos[r] = pos;
    s_first[r] = first;
    const int32_t lo = __reduce_min_sync(0xffffffffu, first);
    const int32_t hi = __reduce_max_sync(0xffffffffu, pos);
    if (lane == 0) {
      s_range[r / 32] = lo;
      s_range[kRows / 32 + r / 32] = hi;
    }
  }
  __syncthreads();
  int32_t kmin = INT_MAX, kmax = -1;  // keys any row of the CTA sees
#pragma unroll
  for (int w = 0; w < kRows / 32; ++w) {
    kmin = min(kmin, s_range[w]);
    kmax = max(kmax, s_range[kRows / 32 + w]);
  }
  if (kmax < 0) return;  // no row (uniform over the CTA)
  // Tiles start at a multiple of kRunKeys (keys below the least first are masked for every row).
  kmin &= ~(T::kRunKeys - 1);

  // Loads: thread tid moves 16-byte chunk tid % kChunks of rows tid / kChunks + k * kRowsPerPass.
  const int chunk = tid % T::kChunks;
  const int row0 = tid / T::kChunks;
#pragma unroll
  for (int k = 0; k < kRows / T::kRowsPerPass; ++k) {
    const int r = row0 + k * T::kRowsPerPass;
    const int32_t qrow = s_qrow[r];
    CpAsync16(q_smem + TileOffset(r, chunk, T::kQBlockBytes),
              p.q + (qrow < 0 ? 0 : static_cast<int64_t>(qrow) * kHeadDim + chunk * 8), qrow >= 0);
  }
  const int32_t* table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
  const int32_t block_elems = p.num_kv_heads * p.block_size * kHeadDim;
  const int64_t head_elems = static_cast<int64_t>(kv_head) * p.block_size * kHeadDim + chunk * 8;
  // Power-of-two block sizes (the usual ones) split a position with a shift instead of a division.
  const int32_t block_shift = (p.block_size & (p.block_size - 1)) == 0 ? __ffs(p.block_size) - 1 : -1;
  // Keys key0 .. key0 + kKeys - 1 of `cache` into the tile at `dst`; keys past kmax are zero-filled.
  // Thread tid moves chunk tid % kChunks of the run of keys key0 + kRunKeys * (tid / kChunks) ...
  // (key0 is a multiple of kRunKeys; with a block size that is a multiple of kRunKeys a run lies in
  // one block, else every key looks its block up).
  const int run = (tid / T::kChunks) * T::kRunKeys;
  const bool runs_in_one_block = p.block_size % T::kRunKeys == 0;  // uniform
  const uint32_t run_dst = TileOffset(run, chunk, T::kKvBlockBytes) & ~uint32_t{0x7F};  // row `run`, no swizzle
  auto load_tile = [&](const __nv_bfloat16* cache, int32_t key0, uint32_t dst) {
    const int32_t first_key = key0 + run;
    if (runs_in_one_block) {
      int64_t src = 0;
      if (first_key <= kmax) {
        const int32_t block = block_shift >= 0 ? first_key >> block_shift : first_key / p.block_size;
        src = static_cast<int64_t>(table[block]) * block_elems + (first_key - block * p.block_size) * kHeadDim;
      }
      const __nv_bfloat16* src_run = cache + head_elems + src;
#pragma unroll
      for (int k = 0; k < T::kRunKeys; ++k) {
        const uint32_t swizzled = static_cast<uint32_t>(((chunk & 7) ^ ((run + k) & 7)) << 4);
        CpAsync16(dst + run_dst + k * 128 + swizzled, src_run + k * kHeadDim, first_key + k <= kmax);
      }
    } else {
#pragma unroll
      for (int k = 0; k < T::kRunKeys; ++k) {
        const int32_t pos = first_key + k;
        const bool valid = pos <= kmax;
        int64_t src = 0;
        if (valid) {
          const int32_t block = pos / p.block_size;
          src = static_cast<int64_t>(table[block]) * block_elems + (pos - block * p.block_size) * kHeadDim;
        }
        CpAsync16(dst + TileOffset(run + k, chunk, T::kKvBlockBytes), cache + head_elems + src, valid);
      }
    }
  };

  const int g = lane >> 2;
  const int t = lane & 3;
  const int row_base = 64 * wg + 16 * wg_warp + g;  // this thread's rows: row_base, row_base + 8
  int32_t hi_first = max(s_first[row_base], s_first[row_base + 8]);
  int32_t lo_pos = min(s_pos[row_base], s_pos[row_base + 8]);
  // Keys inside [hi_first, lo_pos] are visible to every row of the warp (padding rows have pos -1,
  // first INT_MAX): tiles inside it need no mask.
  hi_first = __reduce_max_sync(0xffffffffu, hi_first);
  lo_pos = __reduce_min_sync(0xffffffffu, lo_pos);

  const float scale_log2 = p.scale * kLog2e;
  float o[T::kAccum];
#pragma unroll
  for (int x = 0; x < T::kAccum; ++x) o[x] = 0.0f;
  float s[kKeys / 2];  // S, then P (fp32) of one 64 x 128 tile
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  // Descriptors (K-major Q and K: 8-row groups 1024 bytes apart; MN-major V: 64-dim blocks
  // kKvBlockBytes apart, 8-key groups 1024 apart). A k-step of 16 elements inside a 128-byte block
  // moves the start address by 32 bytes; the hardware applies the swizzle to the final address.
  const uint64_t q_desc = WgmmaDescriptor(q_smem + wg * 64 * 128, 16, 1024);
  const uint64_t k_desc = WgmmaDescriptor(k_smem, 16, 1024);
  const uint64_t v_desc = WgmmaDescriptor(v_smem, T::kKvBlockBytes, 1024);

  // S = Q K^T over the K tile in `stage`.
  auto issue_s = [&](int stage) {
#pragma unroll
    for (int x = 0; x < kKeys / 2; ++x) WgmmaFenceOperand(s[x]);
    WgmmaFence();
#pragma unroll
    for (int kd = 0; kd < kHeadDim / 16; ++kd) {
      const uint32_t q_off = (kd / 4) * T::kQBlockBytes + (kd % 4) * 32;
      const uint32_t k_off = stage * T::kKvBytes + (kd / 4) * T::kKvBlockBytes + (kd % 4) * 32;
      WgmmaSsM64N128K16(s, q_desc + (q_off >> 4), k_desc + (k_off >> 4), kd > 0);
    }
    WgmmaCommit();
#pragma unroll
    for (int x = 0; x < kKeys / 2; ++x) WgmmaFenceOperand(s[x]);
  };
  // O += P V over the V tile in `stage`, P in registers (bf16, the A fragment of 16 keys per step).
  auto issue_pv = [&](uint32_t (&pf)[kKeys / 16][4], int stage) {
#pragma unroll
    for (int x = 0; x < T::kAccum; ++x) WgmmaFenceOperand(o[x]);
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
#pragma unroll
      for (int x = 0; x < 4; ++x) WgmmaFenceOperand(pf[kk][x]);
    }
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      PvWgmma(o, pf[kk], v_desc + ((stage * T::kKvBytes + kk * 16 * 128) >> 4));
    }
    WgmmaCommit();
#pragma unroll
    for (int x = 0; x < T::kAccum; ++x) WgmmaFenceOperand(o[x]);
  };
  // Mask, then the online softmax of S (keys key0 ..) in log2 units; S becomes P (fp32). alpha:
  // the factor O must be scaled by. A row that has seen no key yet keeps m = -inf and l = 0.
  auto softmax = [&](int32_t key0, float (&alpha)[2]) {
    if (!(key0 >= hi_first && key0 + kKeys - 1 <= lo_pos)) {
      int32_t row_pos[2], row_first[2];  // from shared memory: only diagonal tiles need them
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        row_pos[i] = s_pos[row_base + 8 * i];
        row_first[i] = s_first[row_base + 8 * i];
      }
#pragma unroll
      for (int j = 0; j < kKeys / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int32_t key = key0 + j * 8 + 2 * t + (e & 1);
          const int i = e >> 1;
          if (key < row_first[i] || key > row_pos[i]) s[4 * j + e] = -INFINITY;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      // Max and sum as trees over kKeys / 8 partial values (short dependency chains).
      float part[kKeys / 8];
#pragma unroll
      for (int j = 0; j < kKeys / 8; ++j) part[j] = fmaxf(s[4 * j + 2 * i], s[4 * j + 2 * i + 1]);
      TreeMax<kKeys / 16>(part);
      float mx = part[0];
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[i], mx);
      const float base = m_new == -INFINITY ? 0.0f : m_new * scale_log2;
      alpha[i] = Exp2(m[i] * scale_log2 - base);
      m[i] = m_new;
#pragma unroll
      for (int j = 0; j < kKeys / 8; ++j) {
        s[4 * j + 2 * i] = Exp2(fmaf(s[4 * j + 2 * i], scale_log2, -base));
        s[4 * j + 2 * i + 1] = Exp2(fmaf(s[4 * j + 2 * i + 1], scale_log2, -base));
        part[j] = s[4 * j + 2 * i] + s[4 * j + 2 * i + 1];
      }
      TreeSum<kKeys / 16>(part);
      l[i] = l[i] * alpha[i] + part[0];  // this thread's columns; the quad is summed at the end
    }
  };

  // K tile t lives in K[t % kStages], V tile t in V[t % kStages]. Iteration it starts with a
  // barrier after which K tile it + 1 and V tile it are in shared memory (loaded two iterations
  // earlier) and every warpgroup is done with K tile it and V tile it - 1; it issues
  // S(it + 1) = Q K(it + 1)^T and O += P(it) V(it), then loads K tile it + 3 and V tile it + 2 into
  // the buffers just released while the tensor cores run, runs the softmax of S(it + 1) while P V
  // runs, and rescales O once it is done.
  static_assert(kStages == 3);
  const int num_tiles = (kmax - kmin) / kKeys + 1;
  auto load_k = [&](int tile) {
    if (tile < num_tiles) load_tile(p.k_cache, kmin + tile * kKeys, k_smem + (tile % kStages) * T::kKvBytes);
  };
  auto load_v = [&](int tile) {
    if (tile < num_tiles) load_tile(p.v_cache, kmin + tile * kKeys, v_smem + (tile % kStages) * T::kKvBytes);
  };
  load_k(0);
  CpAsyncCommit();  // Q, K tile 0
  load_k(1);
  load_v(0);
  CpAsyncCommit();  // K tile 1, V tile 0
  load_k(2);
  load_v(1);
  CpAsyncCommit();  // K tile 2, V tile 1
  CpAsyncWait<2>();
  FenceProxyAsyncShared();
  __syncthreads();
  {
    issue_s(0);
    WgmmaWait<0>();
#pragma unroll
    for (int x = 0; x < kKeys / 2; ++x) WgmmaFenceOperand(s[x]);
    float alpha[2];
    softmax(kmin, alpha);
  }
  // P of the tile in registers (bf16): the A fragments of its 16-key steps.
  uint32_t pf[kKeys / 16][4];
  auto pack_p = [&]() {
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      pf[kk][0] = PackBf16(s[8 * kk], s[8 * kk + 1]);
      pf[kk][1] = PackBf16(s[8 * kk + 2], s[8 * kk + 3]);
      pf[kk][2] = PackBf16(s[8 * kk + 4], s[8 * kk + 5]);
      pf[kk][3] = PackBf16(s[8 * kk + 6], s[8 * kk + 7]);
    }
  };
  // Every tile but the last (the S issue stays unconditional: ptxas serializes the wgmmas when it
  // cannot prove the softmax reads a completed S).
  for (int it = 0; it + 1 < num_tiles; ++it) {
    const int32_t key0 = kmin + it * kKeys;
    pack_p();
    CpAsyncWait<1>();  // the loads of iteration it - 2 (or the prologue's); it - 1's may still run
    FenceProxyAsyncShared();
    __syncthreads();
    issue_s((it + 1) % kStages);
    issue_pv(pf, it % kStages);
    load_k(it + 3);
    load_v(it + 2);
    CpAsyncCommit();
    WgmmaWait<1>();  // S(it + 1) done; P V may still run
#pragma unroll
    for (int x = 0; x < kKeys / 2; ++x) WgmmaFenceOperand(s[x]);
    float alpha[2];
    softmax(key0 + kKeys, alpha);
    WgmmaWait<0>();
#pragma unroll
    for (int x = 0; x < T::kAccum; ++x) WgmmaFenceOperand(o[x]);
#pragma unroll
    for (int n = 0; n < kHeadDim / 8; ++n) {
      o[4 * n] *= alpha[0];
      o[4 * n + 1] *= alpha[0];
      o[4 * n + 2] *= alpha[1];
      o[4 * n + 3] *= alpha[1];
    }
  }
  // The last tile: P V alone.
  pack_p();
  CpAsyncWait<0>();
  FenceProxyAsyncShared();
  __syncthreads();
  issue_pv(pf, (num_tiles - 1) % kStages);
  WgmmaWait<0>();
#pragma unroll
  for (int x = 0; x < T::kAccum; ++x) WgmmaFenceOperand(o[x]);

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float sum = l[i];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    const int32_t qrow = s_qrow[row_base + 8 * i];
    if (qrow < 0) continue;
    __nv_bfloat16* out = p.out + static_cast<int64_t>(qrow) * kHeadDim + 2 * t;
#pragma unroll
    for (int n = 0; n < kHeadDim / 8; ++n) {
      *reinterpret_cast<__nv_bfloat162*>(out + n * 8) =
          __floats2bfloat162_rn(o[4 * n + 2 * i] * inv, o[4 * n + 2 * i + 1] * inv);
    }
  }
#endif
}

template <int kHeadDim>
cudaError_t Launch(const PagedPrefillAttentionParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned int>(p.num_work_items), static_cast<unsigned int>(p.num_kv_heads));
  return LaunchKernelWithSmem(false, PagedPrefillAttentionWgmmaKernel<kHeadDim>, grid, dim3(kThreads),
                              WgTile<kHeadDim>::kSmemBytes, stream, p);
}

}  // namespace

bool PagedPrefillAttentionWgmmaSupports(int32_t head_dim, int32_t group) {
  return PagedPrefillAttentionSupports(head_dim, group);  // the mma.sync kernel's shapes, its work items
}

cudaError_t LaunchPagedPrefillAttentionWgmma(const PagedPrefillAttentionParams& p, cudaStream_t stream) {
  if (!PagedPrefillAttentionParamsValid(p)) return cudaErrorInvalidValue;
  if (p.num_work_items == 0) return cudaSuccess;
  switch (p.head_dim) {
    case 64: return Launch<64>(p, stream);
    case 128: return Launch<128>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace tandem::kernels
