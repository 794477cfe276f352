#include "kernels/sample_rows.cuh"

#include <climits>
#include <cmath>

#include "kernels/kernel_utils.cuh"

namespace tandem::kernels {
namespace {

constexpr int kThreads = 1024;
constexpr unsigned kFull = 0xffffffffu;

// (value, id) in the order "larger value first, then lower id"; id < 0 means none.
struct Best {
  float value;
  int32_t id;
};

__device__ __forceinline__ bool Better(Best a, Best b) {
  if (a.id < 0) return false;
  if (b.id < 0) return true;
  return a.value > b.value || (a.value == b.value && a.id < b.id);
}

__device__ __forceinline__ Best WarpBest(Best b) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Best other{__shfl_xor_sync(kFull, b.value, o), __shfl_xor_sync(kFull, b.id, o)};
    if (Better(other, b)) b = other;
  }
  return b;
}

// Per-block shared state; every helper below is called by the whole block.
struct Shared {
  Best best[32];
  double partial[32];
  float partial_max[32];
  // Radix selection.
  double sums[256];
  int32_t counts[256];
  int32_t min_ids[256];
  int32_t warp_counts[32];
  uint32_t prefix;
  double remaining;
  int32_t count;
  int32_t jth;
  int32_t id;
  float raw_token;
};

__device__ Best BlockBest(Best b, Shared& sh) {
  const int lane = threadIdx.x & 31;
  b = WarpBest(b);
  __syncthreads();
  if (lane == 0) sh.best[threadIdx.x >> 5] = b;
  __syncthreads();
  b = lane < static_cast<int>(blockDim.x >> 5) ? sh.best[lane] : Best{0.0f, -1};
  return WarpBest(b);
}

__device__ double BlockSumDouble(double v, Shared& sh) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  __syncthreads();
  if (lane == 0) sh.partial[threadIdx.x >> 5] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x >> 5) ? sh.partial[lane] : 0.0;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

__device__ float BlockMax(float m, Shared& sh) {
  const int lane = threadIdx.x & 31;
  m = WarpMax(m);
  __syncthreads();
  if (lane == 0) sh.partial_max[threadIdx.x >> 5] = m;
  __syncthreads();
  m = lane < static_cast<int>(blockDim.x >> 5) ? sh.partial_max[lane] : -INFINITY;
  return WarpMax(m);
}

// Best non-NaN entry of x strictly after `prev` in the order (none: id -1).
__device__ Best BestAfter(const float* x, int32_t vocab, Best prev, Shared& sh) {
  // kUnroll loads per thread in flight before any compare (one pass over a 128k vocabulary is then
  // a few memory round trips, not one per element); Better is a total order, so the visiting order
  // does not change the result.
  constexpr int kUnroll = 16;
  Best b{0.0f, -1};
  for (int32_t base = threadIdx.x; base < vocab; base += kUnroll * blockDim.x) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int32_t i = base + u * static_cast<int32_t>(blockDim.x);
      v[u] = i < vocab ? x[i] : NAN;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int32_t i = base + u * static_cast<int32_t>(blockDim.x);
      if (isnan(v[u])) continue;
      if (prev.id >= 0 && !(v[u] < prev.value || (v[u] == prev.value && i > prev.id))) continue;
      const Best c{v[u], i};
      if (Better(c, b)) b = c;
    }
  }
  return BlockBest(b, sh);
}

// Float -> uint32 in the same order (-0 and +0 equal, like float comparison).
__device__ __forceinline__ uint32_t OrderedKey(float f) {
  const uint32_t u = f == 0.0f ? 0u : __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The first element of a set, in (key desc, id asc) order, at which the running sum of weights
// reaches `target` (sum > target when `strict`, >= otherwise); the last element when rounding
// keeps the sum short. `in_set(i, &key, &weight)` says whether token i is in the set (weights > 0).
// Four 8-bit levels from the top: per-digit counts and double sums (warp-aggregated shared
// atomics), the digit where the running sum crosses, then the j-th lowest id of the final key.
// Returns the token id; *key_out gets its key. The set must not be empty.
template <typename InSet>
__device__ int32_t SelectReaching(const InSet& in_set, int32_t vocab, double target, bool strict,
                                  Shared& sh, uint32_t* key_out) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (threadIdx.x == 0) {
    sh.prefix = 0;
    sh.remaining = target;
  }
  for (int level = 3; level >= 0; --level) {
    const int shift = level * 8;
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
      sh.sums[b] = 0.0;
      sh.counts[b] = 0;
      sh.min_ids[b] = INT_MAX;
    }
    __syncthreads();
    const uint32_t prefix = sh.prefix;
    for (int32_t base = 0; base < vocab; base += blockDim.x) {
      const int32_t i = base + threadIdx.x;
      uint32_t key = 0;
      float w = 0.0f;
      int bin = -1;
      if (i < vocab && in_set(i, &key, &w) &&
          (level == 3 || (key >> (shift + 8)) == (prefix >> (shift + 8)))) {
        bin = static_cast<int>((key >> shift) & 255u);
      }
      unsigned active = __ballot_sync(kFull, bin >= 0);
      while (active != 0) {
        const int leader = __ffs(active) - 1;
        const int b = __shfl_sync(kFull, bin, leader);
        const bool mine = bin == b;
        const unsigned members = __ballot_sync(kFull, mine);
        double s = mine ? static_cast<double>(w) : 0.0;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(kFull, s, o);
        const int min_id = __reduce_min_sync(kFull, mine ? i : INT_MAX);
        if (lane == leader) {
          atomicAdd(&sh.sums[b], s);
          atomicAdd(&sh.counts[b], __popc(members));
          atomicMin(&sh.min_ids[b], min_id);
        }
        active &= ~members;
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      double t = sh.remaining;
      int chosen = -1, lowest = -1;
      for (int b = 255; b >= 0; --b) {
        if (sh.counts[b] == 0) continue;
        lowest = b;
        const double s = sh.sums[b];
        if (strict ? s > t : s >= t) {
          chosen = b;
          break;
        }
        t -= s;
      }
      if (chosen < 0) {  // rounding: the lowest digit, with what it must still reach
        chosen = lowest;
        t += sh.sums[lowest];
      }
      sh.remaining = t;
      sh.prefix |= static_cast<uint32_t>(chosen) << shift;
      sh.count = sh.counts[chosen];
      if (level == 0) {
        // Every element of the final key has the same weight w: the j-th (by id) reaches t.
        const int32_t count = sh.counts[chosen];
        const double w = sh.sums[chosen] / count;
        auto reaches = [&](double j) { return strict ? j * w > t : j * w >= t; };
        double q = t > 0.0 ? floor(t / w) : 0.0;
        int32_t j = q >= static_cast<double>(count) ? count : static_cast<int32_t>(q);
        while (j < count && !reaches(j)) ++j;
        while (j > 1 && reaches(j - 1)) --j;
        sh.jth = j < 1 ? 1 : j;
        sh.id = sh.min_ids[chosen];
      }
    }
    __syncthreads();
  }
  const uint32_t final_key = sh.prefix;
  *key_out = final_key;
  const int32_t j = sh.jth;
  if (j == 1) return sh.id;  // the lowest id of the key
  // Ties in the key (rare): scan ids in order for the j-th.
  int32_t seen = 0;
  for (int32_t base = 0; base < vocab; base += blockDim.x) {
    const int32_t i = base + threadIdx.x;
    uint32_t key = 0;
    float w = 0.0f;
    const bool flag = i < vocab && in_set(i, &key, &w) && key == final_key;
    const int32_t n = __syncthreads_count(flag);
    if (seen + n >= j) {
      const unsigned ballot = __ballot_sync(kFull, flag);
      if (lane == 0) sh.warp_counts[warp] = __popc(ballot);
      __syncthreads();
      if (flag) {
        int32_t before = seen + __popc(ballot & ((1u << lane) - 1u));
        for (int w2 = 0; w2 < warp; ++w2) before += sh.warp_counts[w2];
        if (before + 1 == j) sh.id = i;
      }
      __syncthreads();
      break;
    }
    seen += n;
  }
  return sh.id;
}

__global__ void __launch_bounds__(kThreads) SampleRowsKernel(SampleRowsParams p) {
  __shared__ Shared sh;
  const int32_t r = blockIdx.x;
  const int32_t vocab = p.vocab;
  float* x = p.logits + static_cast<int64_t>(r) * vocab;
  const SampleRowInput in = p.rows[r];

  // Logprobs of the raw logits: log_z = max + log(sum exp(x - max)), float exp, double sum.
  double log_z = 0.0;
  if (in.num_logprobs >= 0) {
    float m = -INFINITY;
    for (int32_t i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, x[i]);
    m = BlockMax(m, sh);
    if (isinf(m)) {
      log_z = static_cast<double>(m);
    } else {
      double s = 0.0;
      for (int32_t i = threadIdx.x; i < vocab; i += blockDim.x) s += static_cast<double>(expf(x[i] - m));
      s = BlockSumDouble(s, sh);
      log_z = static_cast<double>(m) + log(s);
    }
    Best prev{0.0f, -1};
    const int32_t n = min(in.num_logprobs, vocab);
    for (int32_t j = 0; j < n; ++j) {
      prev = BestAfter(x, vocab, prev, sh);
      if (threadIdx.x == 0) {
        const int64_t o = static_cast<int64_t>(r) * kMaxDeviceTopLogprobs + j;
        p.out_top_token[o] = prev.id < 0 ? 0 : prev.id;
        p.out_top_logprob[o] =
            prev.id < 0 ? NAN : static_cast<float>(static_cast<double>(prev.value) - log_z);
      }
      if (prev.id < 0) break;
    }
  }

  // Penalties, in place (entries are unique per row); raw logits kept for the logprob.
  const bool repetition = in.repetition_penalty != 1.0f;
  const bool additive = in.presence_penalty != 0.0f || in.frequency_penalty != 0.0f;
  __syncthreads();  // every read of the raw row above is done
  for (int32_t e = in.penalty_begin + threadIdx.x; e < in.penalty_end; e += blockDim.x) {
    const PenaltyEntry pe = p.penalties[e];
    const float raw = x[pe.token];
    float v = raw;
    if (repetition) {
      v = v > 0.0f ? __fdiv_rn(v, in.repetition_penalty) : __fmul_rn(v, in.repetition_penalty);
    }
    if (additive && pe.output_count > 0) {
      v = __fsub_rn(v, __fadd_rn(in.presence_penalty,
                                 __fmul_rn(in.frequency_penalty, static_cast<float>(pe.output_count))));
    }
    x[pe.token] = v;
    p.penalty_raw[e] = raw;
  }
  __syncthreads();

  int32_t token = -1;
  if (in.temperature != 0.0f) {
    // Candidates: scaled logits that are neither NaN nor -inf.
    const float temperature = in.temperature;
    float m = -INFINITY;
    int32_t num_candidates = 0;
    for (int32_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float s = __fdiv_rn(x[i], temperature);
      if (isnan(s) || s == -INFINITY) continue;
      m = fmaxf(m, s);
      ++num_candidates;
    }
    m = BlockMax(m, sh);
    num_candidates = static_cast<int32_t>(BlockSumDouble(static_cast<double>(num_candidates), sh));
    if (num_candidates > 0) {
      const float max = m;
      // top-k: the k-th candidate in (scaled desc, id asc) order.
      const bool top_k = in.top_k > 0 && in.top_k < num_candidates;
      uint32_t k_key = 0;
      int32_t k_id = INT_MAX;
      auto candidate = [&](int32_t i, uint32_t* key, float* w) {
        const float s = __fdiv_rn(x[i], temperature);
        if (isnan(s) || s == -INFINITY) return false;
        *key = OrderedKey(s);
        *w = 1.0f;
        return true;
      };
      if (top_k) {
        k_id = SelectReaching(candidate, vocab, static_cast<double>(in.top_k), /*strict=*/false, sh,
                              &k_key);
      }
      // Softmax numerators of the top-k survivors (the max token gets exactly 1), > 0 only.
      auto weighted = [&](int32_t i, uint32_t* key, float* w) {
        const float s = __fdiv_rn(x[i], temperature);
        if (isnan(s) || s == -INFINITY) return false;
        if (top_k) {
          const uint32_t k = OrderedKey(s);
          if (k < k_key || (k == k_key && i > k_id)) return false;
        }
        *w = s == max ? 1.0f : expf(s - max);
        *key = __float_as_uint(*w);
        return *w > 0.0f;
      };
      // top-p: keep up to the first token (weight desc, id asc) where the mass reaches top_p.
      uint32_t p_key = 0;
      int32_t p_id = INT_MAX;
      const bool top_p = in.top_p < 1.0f;
      if (top_p) {
        double total = 0.0;
        for (int32_t i = threadIdx.x; i < vocab; i += blockDim.x) {
          uint32_t key;
          float w;
          if (weighted(i, &key, &w)) total += static_cast<double>(w);
        }
        total = BlockSumDouble(total, sh);
        p_id = SelectReaching(weighted, vocab, static_cast<double>(in.top_p) * total, /*strict=*/false,
                              sh, &p_key);
      }
      // min-p: the max weight is 1 (the max token survives top-k and top-p).
      const float cutoff = in.min_p > 0.0f ? in.min_p * 1.0f : 0.0f;
      auto kept = [&](int32_t i, uint32_t* key, float* w) {
        if (!weighted(i, key, w)) return false;
        if (top_p && (*key < p_key || (*key == p_key && i > p_id))) return false;
        return !(in.min_p > 0.0f && *w < cutoff);
      };
      double total = 0.0;
      for (int32_t i = threadIdx.x; i < vocab; i += blockDim.x) {
        uint32_t key;
        float w;
        if (kept(i, &key, &w)) total += static_cast<double>(w);
      }
      total = BlockSumDouble(total, sh);
      uint32_t key;
      token = SelectReaching(kept, vocab, static_cast<double>(in.uniform) * total, /*strict=*/true, sh,
                             &key);
    }
  }
  if (token < 0) {  // greedy, or nothing to sample from: argmax of the penalized logits
    const Best b = BestAfter(x, vocab, Best{0.0f, -1}, sh);
    token = b.id < 0 ? 0 : b.id;
  }
  if (threadIdx.x == 0) p.out_token[r] = token;
  if (in.num_logprobs >= 0) {
    __syncthreads();
    if (threadIdx.x == 0) sh.raw_token = x[token];
    __syncthreads();
    for (int32_t e = in.penalty_begin + threadIdx.x; e < in.penalty_end; e += blockDim.x) {
      if (p.penalties[e].token == token) sh.raw_token = p.penalty_raw[e];  // one entry at most
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      p.out_logprob[r] = static_cast<float>(static_cast<double>(sh.raw_token) - log_z);
    }
  }
}

}  // namespace

cudaError_t LaunchSampleRows(const SampleRowsParams& p, cudaStream_t stream) {
  if (p.num_rows == 0) return cudaSuccess;
  SampleRowsKernel<<<p.num_rows, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace tandem::kernels
