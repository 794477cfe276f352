// Statistical evidence that SampleToken draws from the distribution its specification defines.
//
// For a fixed logits row, each configuration draws N tokens over steps 0..N-1 of one seed and
// compares the counts with the distribution computed here independently, in double precision and
// by the plain definition (sort, filter, renormalize). Seeds are fixed, so the tests are
// deterministic: a p-value threshold of 1e-4 does not make them flaky, and a wrong distribution
// (see the negative controls) gives p-values many orders of magnitude below it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "sampling/sampler.h"

namespace tandem {
namespace {

constexpr int kDraws = 200000;
constexpr double kMinPValue = 1e-4;
// Filter boundaries of the reference must be at least this far from the thresholds, so that float
// rounding in the sampler cannot move a token across them.
constexpr double kBoundaryMargin = 1e-5;

std::vector<float> RandomLogits(size_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 gen(seed);
  std::vector<float> v(n);
  for (float& x : v) x = lo + (hi - lo) * static_cast<float>(gen() >> 8) * 0x1.0p-24f;
  return v;
}

// Q(a, x), the regularized upper incomplete gamma function (series / Lentz continued fraction).
double GammaQ(double a, double x) {
  if (x <= 0.0) return 1.0;
  double log_prefix = -x + a * std::log(x) - std::lgamma(a);
  if (x < a + 1.0) {
    double term = 1.0 / a;
    double sum = term;
    for (int n = 1; n < 10000; ++n) {
      term *= x / (a + n);
      sum += term;
      if (std::abs(term) < std::abs(sum) * 1e-16) break;
    }
    return 1.0 - sum * std::exp(log_prefix);
  }
  constexpr double kTiny = 1e-300;
  double b = x + 1.0 - a;
  double c = 1.0 / kTiny;
  double d = 1.0 / b;
  double h = d;
  for (int i = 1; i < 10000; ++i) {
    double an = -i * (i - a);
    b += 2.0;
    d = an * d + b;
    if (std::abs(d) < kTiny) d = kTiny;
    c = b + an / c;
    if (std::abs(c) < kTiny) c = kTiny;
    d = 1.0 / d;
    double delta = d * c;
    h *= delta;
    if (std::abs(delta - 1.0) < 1e-16) break;
  }
  return std::exp(log_prefix) * h;
}

double ChiSquarePValue(double chi2, int dof) { return GammaQ(dof / 2.0, chi2 / 2.0); }

TEST(ChiSquareTest, PValueMatchesTables) {
  EXPECT_NEAR(ChiSquarePValue(3.841459, 1), 0.05, 1e-6);
  EXPECT_NEAR(ChiSquarePValue(18.307038, 10), 0.05, 1e-6);
  EXPECT_NEAR(ChiSquarePValue(6.634897, 1), 0.01, 1e-6);
  EXPECT_NEAR(ChiSquarePValue(66.766, 40), 0.005, 2e-5);
  EXPECT_NEAR(ChiSquarePValue(30.0, 30), 0.4657, 1e-4);
}

struct Penalties {
  std::vector<TokenId> prompt;
  std::vector<TokenId> output;
};

// The distribution SampleToken must draw from, by definition, in double precision.
std::vector<double> ReferenceDistribution(const std::vector<float>& raw, const SamplingParams& p,
                                          const Penalties& pen) {
  const size_t n = raw.size();
  std::vector<double> logit(raw.begin(), raw.end());
  std::set<TokenId> seen(pen.prompt.begin(), pen.prompt.end());
  seen.insert(pen.output.begin(), pen.output.end());
  std::map<TokenId, int> counts;
  for (TokenId t : pen.output) ++counts[t];
  for (TokenId t : seen) {
    double r = p.repetition_penalty;
    logit[t] = logit[t] > 0 ? logit[t] / r : logit[t] * r;
  }
  for (auto [t, count] : counts) logit[t] -= p.presence_penalty + p.frequency_penalty * count;

  std::vector<double> prob(n);
  double max = *std::max_element(logit.begin(), logit.end()) / p.temperature;
  for (size_t i = 0; i < n; ++i) prob[i] = std::exp(logit[i] / p.temperature - max);
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return prob[a] > prob[b]; });
  std::vector<bool> kept(n, true);
  auto renormalize = [&] {
    double total = 0.0;
    for (size_t i = 0; i < n; ++i) total += kept[i] ? prob[i] : 0.0;
    for (size_t i = 0; i < n; ++i) prob[i] = kept[i] ? prob[i] / total : 0.0;
  };
  renormalize();
  if (p.top_k > 0) {
    for (size_t r = static_cast<size_t>(p.top_k); r < n; ++r) kept[order[r]] = false;
    renormalize();
  }
  if (p.top_p < 1.0f) {
    double cumulative = 0.0;
    bool reached = false;
    for (size_t r = 0; r < n; ++r) {
      size_t t = order[r];
      if (!kept[t]) continue;
      if (reached) {
        kept[t] = false;
        continue;
      }
      EXPECT_GT(std::abs(cumulative - p.top_p), kBoundaryMargin) << "top_p at a knife edge";
      cumulative += prob[t];
      reached = cumulative >= p.top_p;
    }
    renormalize();
  }
  if (p.min_p > 0.0f) {
    double max_prob = *std::max_element(prob.begin(), prob.end());
    for (size_t i = 0; i < n; ++i) {
      if (!kept[i]) continue;
      EXPECT_GT(std::abs(prob[i] / max_prob - p.min_p), kBoundaryMargin) << "min_p at a knife edge";
      if (prob[i] < p.min_p * max_prob) kept[i] = false;
    }
    renormalize();
  }
  return prob;
}

std::vector<int64_t> DrawCounts(const std::vector<float>& raw, const SamplingParams& p,
                                const Penalties& pen, uint64_t seed) {
  std::vector<int64_t> counts(raw.size(), 0);
  SamplerScratch scratch;
  std::vector<float> row(raw.size());
  for (int step = 0; step < kDraws; ++step) {
    std::copy(raw.begin(), raw.end(), row.begin());
    SampleInput in{&p, seed, static_cast<uint64_t>(step), pen.prompt, pen.output};
    ++counts[SampleToken(row, in, &scratch).token];
  }
  return counts;
}

struct Fit {
  double p_value = 0.0;
  int dof = 0;
  int64_t drawn_outside_support = 0;  // draws of tokens with expected probability 0
};

// Pearson chi-square of `counts` against `expected` probabilities; tokens with expected count < 5
// are pooled (smallest first) so that every bin expects at least 5.
Fit GoodnessOfFit(const std::vector<int64_t>& counts, const std::vector<double>& expected) {
  Fit fit;
  int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  std::vector<size_t> support;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (expected[i] > 0.0) {
      support.push_back(i);
    } else {
      fit.drawn_outside_support += counts[i];
    }
  }
  std::sort(support.begin(), support.end(),
            [&](size_t a, size_t b) { return expected[a] > expected[b]; });
  std::vector<std::pair<double, double>> bins;  // (expected count, observed count)
  double pooled_e = 0.0, pooled_o = 0.0;
  for (size_t i : support) {
    double e = expected[i] * static_cast<double>(total);
    if (e >= 5.0) {
      bins.push_back({e, static_cast<double>(counts[i])});
    } else {
      pooled_e += e;
      pooled_o += static_cast<double>(counts[i]);
    }
  }
  if (pooled_e >= 5.0 || bins.empty()) {
    bins.push_back({pooled_e, pooled_o});
  } else if (pooled_e > 0.0) {
    bins.back().first += pooled_e;
    bins.back().second += pooled_o;
  }
  // Draws outside the support count against the fit too (they make it fail outright).
  bins.push_back({1e-300, static_cast<double>(fit.drawn_outside_support)});
  double chi2 = 0.0;
  for (auto [e, o] : bins) chi2 += (o - e) * (o - e) / e;
  fit.dof = static_cast<int>(bins.size()) - 2;
  fit.p_value = fit.dof > 0 ? ChiSquarePValue(chi2, fit.dof) : (chi2 < 1e-9 ? 1.0 : 0.0);
  return fit;
}

class SamplerDistributionTest : public ::testing::Test {
 protected:
  static constexpr size_t kVocab = 50;
  const std::vector<float> logits_ = RandomLogits(kVocab, 2024, -3.0f, 3.0f);

  void ExpectFits(const SamplingParams& p, uint64_t seed, const Penalties& pen = {},
                  size_t expected_support = kVocab) {
    std::vector<double> expected = ReferenceDistribution(logits_, p, pen);
    size_t support = static_cast<size_t>(
        std::count_if(expected.begin(), expected.end(), [](double x) { return x > 0.0; }));
    EXPECT_EQ(support, expected_support) << "the filters do not cut where the test intends";
    std::vector<int64_t> counts = DrawCounts(logits_, p, pen, seed);
    Fit fit = GoodnessOfFit(counts, expected);
    EXPECT_EQ(fit.drawn_outside_support, 0) << "filtered-out tokens were drawn";
    EXPECT_GT(fit.p_value, kMinPValue) << "dof " << fit.dof;
    EXPECT_GE(fit.dof, static_cast<int>(std::min<size_t>(expected_support, 20)) - 2);
  }
};

TEST_F(SamplerDistributionTest, PlainTemperature) {
  SamplingParams p;
  p.temperature = 1.0f;
  ExpectFits(p, 101);
  p.temperature = 0.6f;
  ExpectFits(p, 102);
  p.temperature = 2.5f;
  ExpectFits(p, 103);
}

TEST_F(SamplerDistributionTest, TopK) {
  SamplingParams p;
  p.temperature = 0.8f;
  p.top_k = 12;
  ExpectFits(p, 201, {}, 12);
}

TEST_F(SamplerDistributionTest, TopP) {
  SamplingParams p;
  p.temperature = 1.2f;
  p.top_p = 0.7f;
  std::vector<double> expected = ReferenceDistribution(logits_, p, {});
  size_t support = static_cast<size_t>(
      std::count_if(expected.begin(), expected.end(), [](double x) { return x > 0.0; }));
  ASSERT_GT(support, 5u);
  ASSERT_LT(support, kVocab - 5);
  ExpectFits(p, 301, {}, support);
}

TEST_F(SamplerDistributionTest, MinP) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.min_p = 0.15f;
  std::vector<double> expected = ReferenceDistribution(logits_, p, {});
  size_t support = static_cast<size_t>(
      std::count_if(expected.begin(), expected.end(), [](double x) { return x > 0.0; }));
  ASSERT_GT(support, 5u);
  ASSERT_LT(support, kVocab - 5);
  ExpectFits(p, 401, {}, support);
}

TEST_F(SamplerDistributionTest, TopKTopPMinPCombined) {
  SamplingParams p;
  p.temperature = 0.9f;
  p.top_k = 25;
  p.top_p = 0.9f;
  p.min_p = 0.15f;
  std::vector<double> expected = ReferenceDistribution(logits_, p, {});
  size_t support = static_cast<size_t>(
      std::count_if(expected.begin(), expected.end(), [](double x) { return x > 0.0; }));
  // Each filter must do something for this to test their composition.
  SamplingParams k_only = p;
  k_only.top_p = 1.0f;
  k_only.min_p = 0.0f;
  SamplingParams kp = p;
  kp.min_p = 0.0f;
  auto support_of = [&](const SamplingParams& q) {
    std::vector<double> e = ReferenceDistribution(logits_, q, {});
    return std::count_if(e.begin(), e.end(), [](double x) { return x > 0.0; });
  };
  ASSERT_EQ(support_of(k_only), 25);
  ASSERT_LT(support_of(kp), 25);
  ASSERT_LT(static_cast<long>(support), support_of(kp));
  ExpectFits(p, 501, {}, support);
}

TEST_F(SamplerDistributionTest, Penalties) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.repetition_penalty = 1.4f;
  p.presence_penalty = 0.6f;
  p.frequency_penalty = 0.35f;
  Penalties pen{{1, 2, 3, 5, 8, 13, 21, 34, 2, 3}, {2, 2, 7, 30, 30, 30, 41, 13}};
  // Both branches of the repetition penalty are exercised.
  int positive = 0, negative = 0;
  for (TokenId t : {1, 2, 3, 5, 8, 13, 21, 34, 7, 30, 41}) (logits_[t] > 0 ? positive : negative)++;
  ASSERT_GT(positive, 2);
  ASSERT_GT(negative, 2);
  ExpectFits(p, 601, pen);
  // With penalties and filters together.
  p.top_k = 20;
  p.min_p = 0.05f;
  std::vector<double> expected = ReferenceDistribution(logits_, p, pen);
  size_t support = static_cast<size_t>(
      std::count_if(expected.begin(), expected.end(), [](double x) { return x > 0.0; }));
  ExpectFits(p, 602, pen, support);
}

// Negative controls: the same machinery rejects distributions that are slightly wrong.
TEST_F(SamplerDistributionTest, NegativeControlsAreRejected) {
  SamplingParams p;
  p.temperature = 0.8f;
  p.top_k = 12;
  std::vector<int64_t> counts = DrawCounts(logits_, p, {}, 201);
  SamplingParams unfiltered = p;
  unfiltered.top_k = 0;
  Fit fit = GoodnessOfFit(counts, ReferenceDistribution(logits_, unfiltered, {}));
  EXPECT_LT(fit.p_value, 1e-12) << "top-k draws must not fit the unfiltered distribution";
  SamplingParams wider = p;
  wider.top_k = 13;  // one more token, holding a few percent of the mass
  fit = GoodnessOfFit(counts, ReferenceDistribution(logits_, wider, {}));
  EXPECT_LT(fit.p_value, 1e-12) << "top-12 draws must not fit top-13";

  SamplingParams plain;
  plain.temperature = 1.0f;
  counts = DrawCounts(logits_, plain, {}, 101);
  SamplingParams hotter = plain;
  hotter.temperature = 1.05f;  // 5% off
  fit = GoodnessOfFit(counts, ReferenceDistribution(logits_, hotter, {}));
  EXPECT_LT(fit.p_value, kMinPValue) << "a 5% temperature error must be detected";
  EXPECT_GT(GoodnessOfFit(counts, ReferenceDistribution(logits_, plain, {})).p_value, kMinPValue);
}

// The exact draw, not only its distribution: for each step the token must be the one the
// definition's walk gives for u = PhiloxUniform(seed, step), on a larger vocabulary (steps whose
// u falls within rounding of a cumulative boundary are skipped, and must be rare).
TEST(SamplerWalkTest, EachDrawIsTheInverseCdfOfItsUniform) {
  const std::vector<float> logits = RandomLogits(5000, 77, -6.0f, 6.0f);
  std::vector<SamplingParams> configs(4);
  configs[1].top_p = 0.9f;
  configs[2].top_k = 300;
  configs[2].temperature = 0.7f;
  configs[3].min_p = 0.03f;
  configs[3].temperature = 1.5f;
  for (size_t c = 0; c < configs.size(); ++c) {
    const SamplingParams& p = configs[c];
    std::vector<double> prob = ReferenceDistribution(logits, p, {});
    std::vector<size_t> order(prob.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return prob[a] > prob[b]; });
    SamplerScratch scratch;
    int skipped = 0;
    constexpr int kSteps = 500;
    for (int step = 0; step < kSteps; ++step) {
      const uint64_t seed = 9000 + c;
      double u = PhiloxUniform(seed, static_cast<uint64_t>(step));
      double cumulative = 0.0;
      size_t want = order[0];
      bool near_boundary = false;
      for (size_t t : order) {
        if (prob[t] == 0.0) break;
        double before = cumulative;
        cumulative += prob[t];
        if (std::abs(cumulative - u) < 1e-6 || std::abs(before - u) < 1e-6) near_boundary = true;
        want = t;
        if (cumulative > u) break;
      }
      if (near_boundary) {
        ++skipped;
        continue;
      }
      std::vector<float> row = logits;
      SampleInput in{&p, seed, static_cast<uint64_t>(step), {}, {}};
      ASSERT_EQ(SampleToken(row, in, &scratch).token, static_cast<TokenId>(want))
          << "config " << c << " step " << step << " u " << u;
    }
    EXPECT_LT(skipped, kSteps / 20) << "config " << c;
  }
}

}  // namespace
}  // namespace tandem
