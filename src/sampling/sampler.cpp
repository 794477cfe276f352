// SampleToken and the log-probability helpers: the host reference for the CUDA sampling kernels.
// The order of operations is specified in sampler.h.
#include "sampling/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "tandem/check.h"

namespace tandem {
namespace {

using Candidate = SamplerScratch::Candidate;

// TopLogprobs keeps a sorted insertion buffer up to this n, else partial-sorts an index.
constexpr int32_t kInsertionTopN = 64;

// The sampling order: higher weight first, then lower id. A strict total order (ids are unique).
bool Before(const Candidate& a, const Candidate& b) {
  return a.weight > b.weight || (a.weight == b.weight && a.token < b.token);
}

// log(sum(exp(logits))), max-subtracted: float exponentials, double sum (relative error ~1e-7).
// NaN if any logit is NaN.
double LogSumExp(std::span<const float> logits) {
  float max = -std::numeric_limits<float>::infinity();
  for (float v : logits) max = std::max(max, v);
  if (std::isinf(max)) return max;  // all -inf (or a +inf): the sum is dominated by max
  double sum = 0.0;
  for (float v : logits) sum += std::exp(v - max);
  return static_cast<double>(max) + std::log(sum);
}

// TopLogprobs with log(sum(exp(logits))) already known.
std::vector<TokenLogprob> TopLogprobsGivenLogZ(std::span<const float> logits, int32_t n,
                                               double log_z);

// Lowest id among the largest non-NaN logits; 0 when every logit is NaN.
TokenId Argmax(std::span<const float> logits) {
  TokenId best = 0;
  float best_value = -std::numeric_limits<float>::infinity();
  bool found = false;
  for (size_t i = 0; i < logits.size(); ++i) {
    float v = logits[i];
    if (std::isnan(v)) continue;
    if (!found || v > best_value) {
      best = static_cast<TokenId>(i);
      best_value = v;
      found = true;
    }
  }
  return best;
}

// Positive floats order like their bit patterns, so bits >> kBucketShift buckets weights in (0, 1]
// monotonically (8 exponent bits and the top 4 mantissa bits: 16 buckets per octave).
constexpr int kBucketShift = 19;
constexpr uint32_t kOneBits = 0x3F800000u;  // 1.0f, the largest weight
constexpr size_t kNumBuckets = (kOneBits >> kBucketShift) + 1;

uint32_t Bucket(float weight) {
  return std::min(std::bit_cast<uint32_t>(weight), kOneBits) >> kBucketShift;
}

// The first candidate, in Before order, at which the running sum of weights gets past `target`
// (sum > target when `strict`, >= otherwise); the last candidate when rounding keeps the sum short.
// `c` (weights in (0, 1], not empty) is not reordered. O(n): per-bucket sums find the bucket where
// the running sum crosses the target; only that bucket's candidates are sorted.
Candidate FirstReaching(std::span<const Candidate> c, double target, bool strict,
                        SamplerScratch* scratch) {
  auto reaches = [strict](double sum, double t) { return strict ? sum > t : sum >= t; };
  std::vector<double>& sums = scratch->bucket_sums;
  sums.assign(kNumBuckets, 0.0);
  uint32_t lowest = static_cast<uint32_t>(kNumBuckets - 1);
  for (const Candidate& cand : c) {
    uint32_t b = Bucket(cand.weight);
    sums[b] += cand.weight;
    lowest = std::min(lowest, b);
  }
  double t = target;  // what is left to reach once the buckets above are counted
  uint32_t bucket = static_cast<uint32_t>(kNumBuckets - 1);
  while (bucket > lowest && !reaches(sums[bucket], t)) {
    t -= sums[bucket];
    --bucket;
  }
  std::vector<Candidate>& items = scratch->bucket_items;
  items.clear();
  for (const Candidate& cand : c) {
    if (Bucket(cand.weight) == bucket) items.push_back(cand);
  }
  TANDEM_CHECK(!items.empty()) << "bucket " << bucket << " was chosen for holding weight";
  std::sort(items.begin(), items.end(), Before);
  double sum = 0.0;
  for (const Candidate& cand : items) {
    sum += cand.weight;
    if (reaches(sum, t)) return cand;
  }
  return items.back();  // rounding: the bucket's total reached t but its running sum did not
}

// Step 1. Records each changed token's raw logit in scratch->touched / raw_logits.
void ApplyPenalties(std::span<float> logits, const SampleInput& input, SamplerScratch* scratch) {
  const SamplingParams& p = *input.params;
  scratch->touched.clear();
  scratch->raw_logits.clear();
  bool repetition = p.repetition_penalty != 1.0f;
  bool additive = p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f;
  if (!repetition && !additive) return;

  const int64_t vocab = static_cast<int64_t>(logits.size());
  std::vector<int32_t>& marks = scratch->marks;  // bit 0: seen; bits 1..: count in the output
  if (marks.size() != logits.size()) marks.assign(logits.size(), 0);
  auto mark = [&](TokenId id, int32_t add) {
    TANDEM_CHECK(id >= 0 && id < vocab) << "token id " << id << " outside the vocabulary of "
                                        << vocab << " (ids must be validated at admission)";
    if (marks[id] == 0) scratch->touched.push_back(id);
    marks[id] = (marks[id] | 1) + add;
  };
  if (repetition) {
    for (TokenId id : input.prompt_tokens) mark(id, 0);
  }
  for (TokenId id : input.output_tokens) mark(id, 2);

  for (TokenId id : scratch->touched) {
    float raw = logits[id];
    float v = raw;
    if (repetition) v = v > 0.0f ? v / p.repetition_penalty : v * p.repetition_penalty;
    int32_t count = marks[id] >> 1;
    if (additive && count > 0) {
      v -= p.presence_penalty + p.frequency_penalty * static_cast<float>(count);
    }
    logits[id] = v;
    scratch->raw_logits.push_back(raw);
    marks[id] = 0;
  }
}

// Steps 4 and 5 for temperature > 0. Returns the sampled token.
TokenId SampleFromDistribution(std::span<const float> logits, const SampleInput& input,
                               SamplerScratch* scratch) {
  const SamplingParams& p = *input.params;
  std::vector<Candidate>& c = scratch->candidates;
  c.clear();
  const size_t vocab = logits.size();
  const bool top_k = p.top_k > 0 && static_cast<size_t>(p.top_k) < vocab;
  const size_t k = top_k ? static_cast<size_t>(p.top_k) : vocab;
  // With top-k, a buffer of up to 2k candidates is cut back to the k best whenever it fills; a
  // token no better than the k-th best so far (ties lose: its id is higher) is never buffered.
  const size_t capacity = top_k ? 2 * k : vocab;
  c.reserve(capacity);
  auto keep_k_best = [&c, k]() {
    std::nth_element(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(k - 1), c.end(), Before);
    c.resize(k);
  };
  float max = -std::numeric_limits<float>::infinity();
  float threshold = -std::numeric_limits<float>::infinity();  // k-th best scaled logit so far
  for (size_t i = 0; i < vocab; ++i) {
    float x = logits[i] / p.temperature;
    if (std::isnan(x) || x <= threshold) continue;  // also drops -inf
    c.push_back({x, static_cast<TokenId>(i)});
    max = std::max(max, x);
    if (c.size() == capacity && top_k) {
      keep_k_best();
      threshold = c[k - 1].weight;
    }
  }
  if (c.empty()) return Argmax(logits);
  if (top_k && c.size() > k) keep_k_best();

  // Softmax numerators; the max token gets exactly 1 (also when max is +inf).
  size_t kept = 0;
  for (const Candidate& cand : c) {
    float w = cand.weight == max ? 1.0f : std::exp(cand.weight - max);
    if (w > 0.0f) c[kept++] = {w, cand.token};
  }
  c.resize(kept);
  TANDEM_CHECK(!c.empty()) << "the max-logit token must survive top-k";

  if (p.top_p < 1.0f) {
    double total = 0.0;
    for (const Candidate& cand : c) total += cand.weight;
    Candidate last =
        FirstReaching(c, static_cast<double>(p.top_p) * total, /*strict=*/false, scratch);
    auto end = std::remove_if(c.begin(), c.end(),
                              [last](const Candidate& cand) { return Before(last, cand); });
    c.erase(end, c.end());
  }
  if (p.min_p > 0.0f) {
    float max_weight = 0.0f;
    for (const Candidate& cand : c) max_weight = std::max(max_weight, cand.weight);
    float cutoff = p.min_p * max_weight;
    auto end = std::remove_if(c.begin(), c.end(),
                              [cutoff](const Candidate& cand) { return cand.weight < cutoff; });
    c.erase(end, c.end());
  }

  double total = 0.0;
  for (const Candidate& cand : c) total += cand.weight;
  double target = static_cast<double>(PhiloxUniform(input.seed, input.step)) * total;
  return FirstReaching(c, target, /*strict=*/true, scratch).token;
}

}  // namespace

SampleOutput SampleToken(std::span<float> logits, const SampleInput& input,
                         SamplerScratch* scratch) {
  TANDEM_CHECK(input.params != nullptr) << "SampleInput.params is required";
  TANDEM_CHECK(!logits.empty()) << "empty logits row";
  const SamplingParams& p = *input.params;
  TANDEM_CHECK(p.temperature >= 0.0f && p.repetition_penalty > 0.0f && p.top_p > 0.0f)
      << "SamplingParams must pass Validate() before sampling";
  SamplerScratch local;
  if (scratch == nullptr) scratch = &local;

  SampleOutput out;
  double log_z = 0.0;
  if (p.logprobs >= 0) {
    log_z = LogSumExp(logits);
    out.top_logprobs = TopLogprobsGivenLogZ(logits, p.logprobs, log_z);
  }
  ApplyPenalties(logits, input, scratch);
  out.token =
      p.temperature == 0.0f ? Argmax(logits) : SampleFromDistribution(logits, input, scratch);

  if (p.logprobs >= 0) {
    float raw = logits[out.token];
    for (size_t i = 0; i < scratch->touched.size(); ++i) {
      if (scratch->touched[i] == out.token) raw = scratch->raw_logits[i];
    }
    out.logprob = static_cast<float>(static_cast<double>(raw) - log_z);
  }
  return out;
}

SampleOutput SampleToken(std::span<float> logits, const SampleInput& input,
                         std::vector<float>* /*scratch*/) {
  return SampleToken(logits, input, static_cast<SamplerScratch*>(nullptr));
}

float LogSoftmaxAt(std::span<const float> logits, TokenId token) {
  TANDEM_CHECK(token >= 0 && static_cast<size_t>(token) < logits.size())
      << "token " << token << " outside a row of " << logits.size();
  return static_cast<float>(static_cast<double>(logits[token]) - LogSumExp(logits));
}

std::vector<TokenLogprob> TopLogprobs(std::span<const float> logits, int32_t n) {
  return TopLogprobsGivenLogZ(logits, n, LogSumExp(logits));
}

namespace {

std::vector<TokenLogprob> TopLogprobsGivenLogZ(std::span<const float> logits, int32_t n,
                                               double log_z) {
  size_t count = std::min(static_cast<size_t>(std::max(n, 0)), logits.size());
  std::vector<TokenLogprob> top;
  if (count == 0) return top;
  // Larger logit first, then lower id; NaN ranks last.
  auto before = [](float a, TokenId ia, float b, TokenId ib) {
    if (std::isnan(a) || std::isnan(b)) return !std::isnan(a) && std::isnan(b);
    return a > b || (a == b && ia < ib);
  };
  if (n <= kInsertionTopN) {
    top.reserve(count + 1);
    for (size_t i = 0; i < logits.size(); ++i) {
      TokenId id = static_cast<TokenId>(i);
      if (top.size() == count && !before(logits[i], id, top.back().logprob, top.back().token)) {
        continue;
      }
      auto pos = top.end();
      while (pos != top.begin() && before(logits[i], id, (pos - 1)->logprob, (pos - 1)->token))
        --pos;
      top.insert(pos, {id, logits[i]});
      if (top.size() > count) top.pop_back();
    }
  } else {
    std::vector<TokenId> ids(logits.size());
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<TokenId>(i);
    std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(count), ids.end(),
                      [&](TokenId a, TokenId b) { return before(logits[a], a, logits[b], b); });
    for (size_t i = 0; i < count; ++i) top.push_back({ids[i], logits[ids[i]]});
  }
  for (TokenLogprob& t : top)
    t.logprob = static_cast<float>(static_cast<double>(t.logprob) - log_z);
  return top;
}

}  // namespace
}  // namespace tandem
