// CpuBackend's RopeAndWriteKv and paged Attention against double-precision references on fresh
// random inputs, over head dims 32/64/128, GQA ratios 1/2/4/8, block sizes 1/16/32, with and
// without a sliding window. The batch mixes a decode sequence, prefill chunks behind a cached
// prefix and a fresh prefill; block tables are scattered permutations of the pool, their padding
// and every unused block hold NaN so a read of a wrong slot poisons the output.
//
// Error measure: |got - ref| <= 1e-5 * scale with scale the sum of |terms| of the reference sum
// (for attention: sum_j p_j |v_j|; for a rotation: |x1 cos| + |x2 sin|).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"

namespace tandem {
namespace {

constexpr double kRelTol = 1e-5;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> Random(std::mt19937& rng, size_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// The fused projection's layout: per token q | k | v.
std::vector<float> PackQkv(const std::vector<float>& q, const std::vector<float>& k,
                           const std::vector<float>& v, int64_t tokens, int64_t q_dim, int64_t kv_dim) {
  std::vector<float> qkv;
  qkv.reserve(static_cast<size_t>(tokens * (q_dim + 2 * kv_dim)));
  for (int64_t t = 0; t < tokens; ++t) {
    qkv.insert(qkv.end(), q.begin() + t * q_dim, q.begin() + (t + 1) * q_dim);
    qkv.insert(qkv.end(), k.begin() + t * kv_dim, k.begin() + (t + 1) * kv_dim);
    qkv.insert(qkv.end(), v.begin() + t * kv_dim, v.begin() + (t + 1) * kv_dim);
  }
  return qkv;
}

struct Case {
  int32_t head_dim;
  int32_t num_kv_heads;
  int32_t group;  // num_heads / num_kv_heads
  int32_t block_size;
  int32_t sliding_window;
  std::string Name() const {
    return "hd" + std::to_string(head_dim) + "_kv" + std::to_string(num_kv_heads) + "_g" +
           std::to_string(group) + "_bs" + std::to_string(block_size) + "_win" +
           std::to_string(sliding_window);
  }
};

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  int i = 0;
  for (int32_t hd : {32, 64, 128}) {
    for (int32_t group : {1, 2, 4, 8}) {
      for (int32_t bs : {1, 16, 32}) {
        for (int32_t window : {0, 7}) {
          cases.push_back({hd, i % 2 ? 2 : 1, group, bs, window});
          ++i;
        }
      }
    }
  }
  return cases;
}

// One step's batch over a paged pool: per sequence, its context length after the step and how
// many of those tokens are queries of this step.
struct Batch {
  struct Seq {
    int32_t context_len;
    int32_t query_len;
  };
  std::vector<Seq> seqs;
  int32_t block_size = 16;
  int32_t num_blocks = 0;      // pool size, a spare poisoned block included
  int32_t poison_block = 0;    // NaN block used as table padding
  int32_t max_blocks = 0;
  std::vector<int32_t> tables;  // [num_seqs, max_blocks]
  std::vector<int32_t> query_start, context_lens, positions;
  std::vector<int64_t> slots;
  int32_t num_tokens = 0;

  int64_t Slot(int32_t s, int32_t pos) const {
    return static_cast<int64_t>(tables[s * max_blocks + pos / block_size]) * block_size + pos % block_size;
  }

  AttentionMetadata Meta() const {
    AttentionMetadata m;
    m.num_seqs = static_cast<int32_t>(seqs.size());
    m.num_tokens = num_tokens;
    m.query_start = query_start;
    m.context_lens = context_lens;
    m.block_tables = tables;
    m.max_blocks_per_seq = max_blocks;
    m.positions = positions;
    m.slot_mapping = slots;
    m.block_size = block_size;
    m.max_query_len = 0;
    m.max_context_len = 0;
    for (const Seq& s : seqs) {
      m.max_query_len = std::max(m.max_query_len, s.query_len);
      m.max_context_len = std::max(m.max_context_len, s.context_len);
    }
    return m;
  }
};

// Decode at a context of 37, a prefill chunk of 13 behind a cached prefix of 20, a fresh prefill
// of 9, a one-token sequence, and a chunk of 16 behind 32 cached tokens (block-aligned).
Batch MakeBatch(std::mt19937& rng, int32_t block_size) {
  Batch b;
  b.block_size = block_size;
  b.seqs = {{37, 1}, {33, 13}, {9, 9}, {1, 1}, {48, 16}};
  int32_t total_blocks = 0;
  for (const auto& s : b.seqs) {
    const int32_t n = (s.context_len + block_size - 1) / block_size;
    b.max_blocks = std::max(b.max_blocks, n);
    total_blocks += n;
  }
  // Spare blocks never referenced, plus the poison block.
  b.num_blocks = total_blocks + 5;
  std::vector<int32_t> ids(b.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  b.poison_block = ids.back();
  ids.pop_back();
  b.tables.assign(b.seqs.size() * b.max_blocks, b.poison_block);
  size_t next = 0;
  b.query_start.push_back(0);
  for (size_t s = 0; s < b.seqs.size(); ++s) {
    const int32_t n = (b.seqs[s].context_len + block_size - 1) / block_size;
    for (int32_t j = 0; j < n; ++j) b.tables[s * b.max_blocks + j] = ids[next++];
    b.context_lens.push_back(b.seqs[s].context_len);
    for (int32_t p = b.seqs[s].context_len - b.seqs[s].query_len; p < b.seqs[s].context_len; ++p) {
      b.positions.push_back(p);
      b.slots.push_back(b.Slot(static_cast<int32_t>(s), p));
    }
    b.query_start.push_back(static_cast<int32_t>(b.positions.size()));
  }
  b.num_tokens = static_cast<int32_t>(b.positions.size());
  return b;
}

class CpuAttentionTest : public ::testing::TestWithParam<Case> {
 protected:
  CpuBackend backend_{CpuBackendConfig{2}};
};

// Attention over keys/values written straight into the pool (not through RopeAndWriteKv).
TEST_P(CpuAttentionTest, PagedAttentionMatchesDoubleReference) {
  const Case c = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(c.head_dim * 1000 + c.group * 100 + c.block_size * 3 + c.sliding_window));
  const Batch b = MakeBatch(rng, c.block_size);
  const int32_t hd = c.head_dim, nkv = c.num_kv_heads, nh = nkv * c.group;
  const int64_t slot_elems = static_cast<int64_t>(nkv) * c.block_size * hd;  // one block
  std::vector<float> kc(b.num_blocks * slot_elems, kNaN), vc(b.num_blocks * slot_elems, kNaN);
  // Dense per-sequence K/V [pos][kvh][d]: the reference reads these, the kernel the pool.
  std::vector<std::vector<float>> kd, vd;
  for (size_t s = 0; s < b.seqs.size(); ++s) {
    const int32_t ctx = b.seqs[s].context_len;
    kd.push_back(Random(rng, static_cast<size_t>(ctx) * nkv * hd, -2.0f, 2.0f));
    vd.push_back(Random(rng, static_cast<size_t>(ctx) * nkv * hd, -2.0f, 2.0f));
    for (int32_t p = 0; p < ctx; ++p) {
      const int64_t slot = b.Slot(static_cast<int32_t>(s), p);
      for (int32_t h = 0; h < nkv; ++h) {
        const int64_t dst = ((slot / c.block_size * nkv + h) * c.block_size + slot % c.block_size) * hd;
        std::copy_n(&kd[s][(static_cast<size_t>(p) * nkv + h) * hd], hd, &kc[dst]);
        std::copy_n(&vd[s][(static_cast<size_t>(p) * nkv + h) * hd], hd, &vc[dst]);
      }
    }
  }
  std::vector<float> q = Random(rng, static_cast<size_t>(b.num_tokens) * nh * hd, -2.0f, 2.0f);
  std::vector<float> out(q.size(), kNaN);
  AttentionParams params{nh, nkv, hd, 1.0f / std::sqrt(static_cast<float>(hd)), c.sliding_window};
  if (c.block_size == 16) params.scale = 0.3f;  // a model-given scale
  KvLayerView cache{Tensor(kc.data(), DType::kF32, {b.num_blocks, nkv, c.block_size, hd}),
                    Tensor(vc.data(), DType::kF32, {b.num_blocks, nkv, c.block_size, hd})};
  const AttentionMetadata meta = b.Meta();
  ASSERT_TRUE(backend_.Attention(Tensor(q.data(), DType::kF32, {b.num_tokens, nh * hd}), cache, params,
                                 meta, Tensor(out.data(), DType::kF32, {b.num_tokens, nh * hd}))
                  .ok());
  int bad = 0;
  for (size_t s = 0; s < b.seqs.size(); ++s) {
    for (int32_t t = b.query_start[s]; t < b.query_start[s + 1]; ++t) {
      const int32_t pos = b.positions[t];
      const int32_t first = c.sliding_window > 0 ? std::max(0, pos - c.sliding_window + 1) : 0;
      for (int32_t h = 0; h < nh; ++h) {
        const int32_t kvh = h / c.group;
        const float* qv = &q[(static_cast<size_t>(t) * nh + h) * hd];
        std::vector<double> w;
        double max_score = -INFINITY;
        for (int32_t p = first; p <= pos; ++p) {
          const float* kv = &kd[s][(static_cast<size_t>(p) * nkv + kvh) * hd];
          double dot = 0.0;
          for (int32_t d = 0; d < hd; ++d) dot += static_cast<double>(qv[d]) * kv[d];
          w.push_back(dot * params.scale);
          max_score = std::max(max_score, w.back());
        }
        double sum = 0.0;
        for (double& x : w) sum += (x = std::exp(x - max_score));
        for (int32_t d = 0; d < hd; ++d) {
          double ref = 0.0, mag = 0.0;
          for (int32_t p = first; p <= pos; ++p) {
            const double v = vd[s][(static_cast<size_t>(p) * nkv + kvh) * hd + d];
            ref += w[p - first] / sum * v;
            mag += w[p - first] / sum * std::abs(v);
          }
          const double got = out[(static_cast<size_t>(t) * nh + h) * hd + d];
          if (!(std::abs(got - ref) <= kRelTol * mag) && bad++ < 5) {
            ADD_FAILURE() << "seq " << s << " token " << t << " (pos " << pos << ") head " << h << " dim "
                          << d << ": " << got << ", reference " << ref;
          }
        }
      }
    }
  }
  EXPECT_EQ(bad, 0);
}

// Rotates q and k (HF rotate_half over the first rotary_dim dims of each head) at arbitrary
// positions and writes k and v into the pool at the slots given; no other slot changes.
TEST_P(CpuAttentionTest, RopeAndWriteKvRotatesAndWritesOnlyTheGivenSlots) {
  const Case c = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(7 + c.head_dim * 31 + c.group * 7 + c.block_size));
  const Batch b = MakeBatch(rng, c.block_size);
  const int32_t hd = c.head_dim, nkv = c.num_kv_heads, nh = nkv * c.group;
  // Partial rotary in half of the cases (sliding-window ones): rotary_dim = head_dim / 2.
  const int32_t rotary_dim = c.sliding_window ? hd / 2 : hd;
  const int32_t half = rotary_dim / 2;
  const int64_t max_positions = 64;
  // Tables from random angles (the backend must use them as given, whatever they hold).
  std::vector<float> cos_t(max_positions * half), sin_t(max_positions * half);
  for (size_t i = 0; i < cos_t.size(); ++i) {
    const double a = std::uniform_real_distribution<double>(-10.0, 10.0)(rng);
    cos_t[i] = static_cast<float>(std::cos(a));
    sin_t[i] = static_cast<float>(std::sin(a));
  }
  RopeTables rope{Tensor(cos_t.data(), DType::kF32, {max_positions, half}),
                  Tensor(sin_t.data(), DType::kF32, {max_positions, half}), rotary_dim};
  const int64_t pool_elems = static_cast<int64_t>(b.num_blocks) * nkv * c.block_size * hd;
  std::vector<float> kc = Random(rng, pool_elems, 100.0f, 200.0f);
  std::vector<float> vc = Random(rng, pool_elems, 100.0f, 200.0f);
  const std::vector<float> kc_before = kc, vc_before = vc;
  std::vector<float> q = Random(rng, static_cast<size_t>(b.num_tokens) * nh * hd, -2.0f, 2.0f);
  std::vector<float> k = Random(rng, static_cast<size_t>(b.num_tokens) * nkv * hd, -2.0f, 2.0f);
  std::vector<float> v = Random(rng, static_cast<size_t>(b.num_tokens) * nkv * hd, -2.0f, 2.0f);
  const std::vector<float> q0 = q, k0 = k, v0 = v;
  AttentionParams params{nh, nkv, hd, 1.0f, c.sliding_window};
  KvLayerView cache{Tensor(kc.data(), DType::kF32, {b.num_blocks, nkv, c.block_size, hd}),
                    Tensor(vc.data(), DType::kF32, {b.num_blocks, nkv, c.block_size, hd})};
  std::vector<float> qkv = PackQkv(q, k, v, b.num_tokens, nh * hd, nkv * hd);
  const std::vector<float> qkv0 = qkv;
  std::fill(q.begin(), q.end(), kNaN);  // q receives the rotated q
  ASSERT_TRUE(backend_.RopeAndWriteKv(Tensor(qkv.data(), DType::kF32, {b.num_tokens, (nh + 2 * nkv) * hd}),
                                      Tensor(q.data(), DType::kF32, {b.num_tokens, nh * hd}), rope,
                                      params, b.Meta(), cache)
                  .ok());
  EXPECT_EQ(qkv, qkv0) << "qkv was modified";
  int bad = 0;
  // Expected rotation of one head vector.
  auto check_rotated = [&](const float* before, const float* after, int32_t pos, const std::string& what) {
    for (int32_t i = 0; i < hd; ++i) {
      double ref, mag;
      if (i < rotary_dim) {
        const int32_t j = i % half;
        const double cs = cos_t[pos * half + j], sn = sin_t[pos * half + j];
        const double x1 = before[j], x2 = before[j + half];
        ref = i < half ? x1 * cs - x2 * sn : x2 * cs + x1 * sn;
        mag = i < half ? std::abs(x1 * cs) + std::abs(x2 * sn) : std::abs(x2 * cs) + std::abs(x1 * sn);
      } else {
        ref = before[i];  // past rotary_dim: untouched
        mag = 0.0;
      }
      if (!(std::abs(after[i] - ref) <= kRelTol * mag) && bad++ < 5) {
        ADD_FAILURE() << what << " pos " << pos << " dim " << i << ": " << after[i] << ", reference " << ref;
      }
    }
  };
  std::vector<bool> written(static_cast<size_t>(b.num_blocks) * c.block_size, false);
  for (int32_t t = 0; t < b.num_tokens; ++t) {
    const int32_t pos = b.positions[t];
    for (int32_t h = 0; h < nh; ++h) {
      const size_t off = (static_cast<size_t>(t) * nh + h) * hd;
      check_rotated(&q0[off], &q[off], pos, "q token " + std::to_string(t) + " head " + std::to_string(h));
    }
    const int64_t slot = b.slots[t];
    written[slot] = true;
    for (int32_t h = 0; h < nkv; ++h) {
      const size_t off = (static_cast<size_t>(t) * nkv + h) * hd;
      const int64_t dst = ((slot / c.block_size * nkv + h) * c.block_size + slot % c.block_size) * hd;
      // The cache holds the rotated k and the unchanged v.
      check_rotated(&k0[off], &kc[dst], pos, "k token " + std::to_string(t) + " head " + std::to_string(h));
      EXPECT_EQ(std::memcmp(&vc[dst], &v0[off], hd * sizeof(float)), 0) << "v slot " << slot << " head " << h;
    }
  }
  EXPECT_EQ(bad, 0);
  // Every other slot keeps its bytes.
  int64_t touched = 0;
  for (int64_t blk = 0; blk < b.num_blocks; ++blk) {
    for (int32_t h = 0; h < nkv; ++h) {
      for (int32_t o = 0; o < c.block_size; ++o) {
        if (written[blk * c.block_size + o]) continue;
        const int64_t base = ((blk * nkv + h) * c.block_size + o) * hd;
        touched += std::memcmp(&kc[base], &kc_before[base], hd * sizeof(float)) != 0;
        touched += std::memcmp(&vc[base], &vc_before[base], hd * sizeof(float)) != 0;
      }
    }
  }
  EXPECT_EQ(touched, 0) << "slots outside slot_mapping were written";
}

INSTANTIATE_TEST_SUITE_P(Shapes, CpuAttentionTest, ::testing::ValuesIn(AllCases()),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.Name(); });

// RopeAndWriteKv then Attention, as a layer runs them: a prefill of 20 tokens in two chunks and
// then one decode token give the same outputs as one reference pass over the rotated keys.
TEST(CpuAttentionPipelineTest, ChunkedRopeThenAttentionEqualsReference) {
  CpuBackend backend(CpuBackendConfig{2});
  std::mt19937 rng(99);
  const int32_t hd = 64, nkv = 2, nh = 8, bs = 16, len = 21, half = hd / 2, max_pos = 32;
  std::vector<float> cos_t(max_pos * half), sin_t(max_pos * half);
  for (int32_t p = 0; p < max_pos; ++p) {
    for (int32_t i = 0; i < half; ++i) {
      const double a = p * std::pow(10000.0, -2.0 * i / hd);
      cos_t[p * half + i] = static_cast<float>(std::cos(a));
      sin_t[p * half + i] = static_cast<float>(std::sin(a));
    }
  }
  RopeTables rope{Tensor(cos_t.data(), DType::kF32, {max_pos, half}),
                  Tensor(sin_t.data(), DType::kF32, {max_pos, half}), hd};
  const std::vector<int32_t> table = {3, 0};  // scattered
  const int32_t num_blocks = 4;
  std::vector<float> kc(num_blocks * nkv * bs * hd, kNaN), vc(kc.size(), kNaN);
  KvLayerView cache{Tensor(kc.data(), DType::kF32, {num_blocks, nkv, bs, hd}),
                    Tensor(vc.data(), DType::kF32, {num_blocks, nkv, bs, hd})};
  const std::vector<float> q_all = Random(rng, len * nh * hd), k_all = Random(rng, len * nkv * hd),
                           v_all = Random(rng, len * nkv * hd);
  AttentionParams params{nh, nkv, hd, 1.0f / 8.0f, 0};
  std::vector<float> out_all(len * nh * hd, kNaN);
  for (auto [begin, end] : {std::pair{0, 12}, std::pair{12, 20}, std::pair{20, 21}}) {
    const int32_t n = end - begin;
    std::vector<float> q(q_all.begin() + begin * nh * hd, q_all.begin() + end * nh * hd);
    std::vector<float> k(k_all.begin() + begin * nkv * hd, k_all.begin() + end * nkv * hd);
    std::vector<float> v(v_all.begin() + begin * nkv * hd, v_all.begin() + end * nkv * hd);
    std::vector<int32_t> positions(n), query_start{0, n}, context_lens{end};
    std::iota(positions.begin(), positions.end(), begin);
    std::vector<int64_t> slots;
    for (int32_t p : positions) slots.push_back(static_cast<int64_t>(table[p / bs]) * bs + p % bs);
    AttentionMetadata meta;
    meta.num_seqs = 1;
    meta.num_tokens = n;
    meta.query_start = query_start;
    meta.context_lens = context_lens;
    meta.block_tables = table;
    meta.max_blocks_per_seq = 2;
    meta.positions = positions;
    meta.slot_mapping = slots;
    meta.block_size = bs;
    meta.max_query_len = n;
    meta.max_context_len = end;
    std::vector<float> qkv = PackQkv(q, k, v, n, nh * hd, nkv * hd);
    ASSERT_TRUE(backend.RopeAndWriteKv(Tensor(qkv.data(), DType::kF32, {n, (nh + 2 * nkv) * hd}),
                                       Tensor(q.data(), DType::kF32, {n, nh * hd}), rope, params, meta, cache)
                    .ok());
    ASSERT_TRUE(backend.Attention(Tensor(q.data(), DType::kF32, {n, nh * hd}), cache, params, meta,
                                  Tensor(out_all.data() + begin * nh * hd, DType::kF32, {n, nh * hd}))
                    .ok());
  }
  // Reference: rotate everything in double, causal softmax attention.
  auto rotate = [&](const float* x, int32_t pos, std::vector<double>* r) {
    r->assign(hd, 0.0);
    for (int32_t i = 0; i < half; ++i) {
      const double cs = cos_t[pos * half + i], sn = sin_t[pos * half + i];
      (*r)[i] = x[i] * cs - x[i + half] * sn;
      (*r)[i + half] = x[i + half] * cs + x[i] * sn;
    }
  };
  int bad = 0;
  for (int32_t t = 0; t < len; ++t) {
    for (int32_t h = 0; h < nh; ++h) {
      std::vector<double> qr, kr;
      rotate(&q_all[(t * nh + h) * hd], t, &qr);
      std::vector<double> w;
      double mx = -INFINITY;
      for (int32_t p = 0; p <= t; ++p) {
        rotate(&k_all[(p * nkv + h / 4) * hd], p, &kr);
        double dot = 0.0;
        for (int32_t d = 0; d < hd; ++d) dot += qr[d] * kr[d];
        w.push_back(dot * params.scale);
        mx = std::max(mx, w.back());
      }
      double sum = 0.0;
      for (double& x : w) sum += (x = std::exp(x - mx));
      for (int32_t d = 0; d < hd; ++d) {
        double ref = 0.0, mag = 0.0;
        for (int32_t p = 0; p <= t; ++p) {
          const double v = v_all[(p * nkv + h / 4) * hd + d];
          ref += w[p] / sum * v;
          mag += w[p] / sum * std::abs(v);
        }
        const double got = out_all[(t * nh + h) * hd + d];
        if (!(std::abs(got - ref) <= kRelTol * mag) && bad++ < 5) {
          ADD_FAILURE() << "token " << t << " head " << h << " dim " << d << ": " << got << " vs " << ref;
        }
      }
    }
  }
  EXPECT_EQ(bad, 0);
}

}  // namespace
}  // namespace tandem
