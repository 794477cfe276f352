#include "backend/cpu/cpu_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace tandem::cpu {
namespace {

// HF rotate_half convention: pairs (i, i + rotary_dim / 2).
void Rotate(float* x, const float* cos, const float* sin, int32_t half) {
  for (int32_t i = 0; i < half; ++i) {
    const float x1 = x[i];
    const float x2 = x[i + half];
    x[i] = x1 * cos[i] - x2 * sin[i];
    x[i + half] = x2 * cos[i] + x1 * sin[i];
  }
}

float Dot(const float* a, const float* b, int32_t n) {
  float acc[8] = {};
  int32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  for (; i < n; ++i) acc[i % 8] += a[i] * b[i];
  return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

}  // namespace

void RopeAndWriteKv(const Tensor& qkv, Tensor q_out, const RopeTables& rope,
                    const AttentionParams& params, const AttentionMetadata& meta,
                    KvLayerView cache, ThreadPool& pool) {
  const int32_t hd = params.head_dim;
  const int32_t half = rope.rotary_dim / 2;
  const int64_t max_pos = rope.cos.dim(0);
  const int32_t bs = meta.block_size;
  const int32_t nh = params.num_heads;
  const int32_t nkv = params.num_kv_heads;
  const int64_t row = static_cast<int64_t>(nh + 2 * nkv) * hd;
  TANDEM_CHECK_EQ(qkv.numel(), static_cast<int64_t>(meta.num_tokens) * row);
  TANDEM_CHECK_GE(q_out.numel(), static_cast<int64_t>(meta.num_tokens) * nh * hd);
  pool.ParallelFor(meta.num_tokens, 8, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int32_t pos = meta.positions[t];
      TANDEM_CHECK(pos >= 0 && pos < max_pos) << "position " << pos << " beyond rope table";
      const float* cos = rope.cos.as<const float>() + static_cast<int64_t>(pos) * half;
      const float* sin = rope.sin.as<const float>() + static_cast<int64_t>(pos) * half;
      const float* src = qkv.as<const float>() + t * row;
      float* qt = q_out.as<float>() + t * nh * hd;
      std::copy(src, src + static_cast<int64_t>(nh) * hd, qt);
      for (int32_t h = 0; h < nh; ++h) Rotate(qt + h * hd, cos, sin, half);
      const int64_t slot = meta.slot_mapping[t];
      if (slot < 0) continue;  // a padded row: nothing to write
      const float* kt = src + static_cast<int64_t>(nh) * hd;
      const float* vt = kt + static_cast<int64_t>(nkv) * hd;
      const int64_t block = slot / bs;
      const int64_t offset = slot % bs;
      for (int32_t h = 0; h < nkv; ++h) {
        // k is rotated where it lands, in the cache.
        const int64_t dst = ((block * nkv + h) * bs + offset) * hd;
        float* k_dst = cache.k.as<float>() + dst;
        std::copy(kt + h * hd, kt + (h + 1) * hd, k_dst);
        Rotate(k_dst, cos, sin, half);
        std::copy(vt + h * hd, vt + (h + 1) * hd, cache.v.as<float>() + dst);
      }
    }
  });
}

void PagedAttention(const Tensor& q, KvLayerView cache, const AttentionParams& params,
                    const AttentionMetadata& meta, Tensor out, ThreadPool& pool) {
  const int32_t hd = params.head_dim;
  const int32_t nh = params.num_heads;
  const int32_t nkv = params.num_kv_heads;
  const int32_t group = nh / nkv;
  const int32_t bs = meta.block_size;
  // Token -> sequence index.
  std::vector<int32_t> seq_of_token(meta.num_tokens);
  for (int32_t s = 0; s < meta.num_seqs; ++s) {
    for (int32_t t = meta.query_start[s]; t < meta.query_start[s + 1]; ++t) seq_of_token[t] = s;
  }
  const float* kc = cache.k.as<const float>();
  const float* vc = cache.v.as<const float>();
  pool.ParallelFor(static_cast<int64_t>(meta.num_tokens) * nh, 4, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;  // per-thread scratch, reused across calls
    thread_local std::vector<float> acc;
    acc.resize(hd);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / nh;
      const int32_t h = static_cast<int32_t>(item % nh);
      const int32_t kvh = h / group;
      const int32_t s = seq_of_token[t];
      const int32_t pos = meta.positions[t];
      TANDEM_CHECK_LT(pos, meta.context_lens[s]);
      const int32_t first = params.sliding_window > 0 ? std::max(0, pos - params.sliding_window + 1) : 0;
      const int32_t n = pos + 1 - first;
      const int32_t* table = meta.block_tables.data() + static_cast<int64_t>(s) * meta.max_blocks_per_seq;
      const float* qv = q.as<const float>() + (t * nh + h) * hd;
      scores.resize(n);
      float max_score = -INFINITY;
      for (int32_t j = 0; j < n; ++j) {
        const int32_t p = first + j;
        const int64_t block = table[p / bs];
        const float* kv = kc + ((block * nkv + kvh) * bs + p % bs) * hd;
        scores[j] = Dot(qv, kv, hd) * params.scale;
        max_score = std::max(max_score, scores[j]);
      }
      float sum = 0.0f;
      for (int32_t j = 0; j < n; ++j) {
        scores[j] = std::exp(scores[j] - max_score);
        sum += scores[j];
      }
      const float inv = 1.0f / sum;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int32_t j = 0; j < n; ++j) {
        const int32_t p = first + j;
        const int64_t block = table[p / bs];
        const float* vv = vc + ((block * nkv + kvh) * bs + p % bs) * hd;
        const float w = scores[j] * inv;
        for (int32_t d = 0; d < hd; ++d) acc[d] += w * vv[d];
      }
      float* o = out.as<float>() + (t * nh + h) * hd;
      std::copy(acc.begin(), acc.end(), o);
    }
  });
}

}  // namespace tandem::cpu
