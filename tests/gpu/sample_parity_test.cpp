// CudaBackend::SampleRows against SampleToken (sampling/sampler.h) on the same logits rows: greedy
// tokens identical, seeded sampling identical for all but boundary cases (the match rate is
// printed), logprobs within 1e-4, penalties and ties included; and a chi-square test of the device
// sampler's empirical distribution against the exact top-k/top-p/min-p distribution.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <cstdio>
#include <random>
#include <vector>

#include "gpu_test_support.h"
#include "sampling/sampler.h"

namespace tandem {
namespace {

struct RowSpec {
  SamplingParams params;
  std::vector<TokenId> prompt, output;
};

// Random logits (normal, scale 3) with planted ties at the maximum in every 4th row.
std::vector<float> RandomLogits(int32_t rows, int32_t vocab, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> x(static_cast<size_t>(rows) * vocab);
  for (float& v : x) v = normal(rng);
  std::uniform_int_distribution<int32_t> id(0, vocab - 1);
  for (int32_t r = 0; r < rows; r += 4) {
    float* row = x.data() + static_cast<size_t>(r) * vocab;
    const int32_t a = id(rng), b = id(rng);
    row[a] = row[b] = 40.0f;  // both the maximum: the lower id must win
  }
  return x;
}

void CheckRows(Backend& gpu, const std::vector<RowSpec>& specs, int32_t vocab, std::mt19937& rng,
               int* mismatches, double* worst_logprob_err) {
  const int32_t rows = static_cast<int32_t>(specs.size());
  std::vector<float> logits = RandomLogits(rows, vocab, rng);
  std::vector<SampleInput> inputs(specs.size());
  for (size_t r = 0; r < specs.size(); ++r) {
    inputs[r].params = &specs[r].params;
    inputs[r].seed = 1000 + r;
    inputs[r].step = r % 7;
    inputs[r].prompt_tokens = specs[r].prompt;
    inputs[r].output_tokens = specs[r].output;
  }
  std::vector<SampleOutput> ref(specs.size());
  SamplerScratch scratch;
  for (size_t r = 0; r < specs.size(); ++r) {
    std::vector<float> row(logits.begin() + static_cast<int64_t>(r) * vocab,
                           logits.begin() + static_cast<int64_t>(r + 1) * vocab);
    ref[r] = SampleToken(row, inputs[r], &scratch);
  }
  auto dev = gpu_testing::Upload(gpu, logits, DType::kF32, {rows, vocab});
  std::vector<SampleOutput> out(specs.size());
  ASSERT_TRUE(gpu.SampleRows(dev.t, inputs, out).ok());
  for (size_t r = 0; r < specs.size(); ++r) {
    if (out[r].token != ref[r].token) ++*mismatches;
    if (specs[r].params.temperature == 0.0f) {
      EXPECT_EQ(out[r].token, ref[r].token) << "row " << r;
    }
    if (specs[r].params.logprobs >= 0 && out[r].token == ref[r].token) {
      *worst_logprob_err = std::max<double>(*worst_logprob_err, std::abs(out[r].logprob - ref[r].logprob));
      EXPECT_NEAR(out[r].logprob, ref[r].logprob, 1e-4) << "row " << r;
      ASSERT_EQ(out[r].top_logprobs.size(), ref[r].top_logprobs.size()) << "row " << r;
      for (size_t j = 0; j < ref[r].top_logprobs.size(); ++j) {
        EXPECT_EQ(out[r].top_logprobs[j].token, ref[r].top_logprobs[j].token) << "row " << r << " top " << j;
        *worst_logprob_err = std::max<double>(
            *worst_logprob_err, std::abs(out[r].top_logprobs[j].logprob - ref[r].top_logprobs[j].logprob));
        EXPECT_NEAR(out[r].top_logprobs[j].logprob, ref[r].top_logprobs[j].logprob, 1e-4);
      }
    }
  }
}

TEST(SampleParityTest, GreedyWithPenaltiesAndLogprobs) {
  auto gpu = gpu_testing::MakeGpuBackend();
  ASSERT_NE(gpu, nullptr);
  std::mt19937 rng(77);
  int mismatches = 0, total = 0;
  double worst = 0.0;
  for (int32_t vocab : {1000, 32000, 128256}) {
    for (int32_t rows : {1, 7, 256}) {
      std::vector<RowSpec> specs(static_cast<size_t>(rows));
      std::uniform_int_distribution<int32_t> id(0, vocab - 1);
      for (int32_t r = 0; r < rows; ++r) {
        RowSpec& s = specs[static_cast<size_t>(r)];
        s.params.temperature = 0.0f;
        s.params.logprobs = (r % 3 == 0) ? -1 : (r % 3 == 1 ? 0 : 1 + r % 20);
        if (r % 2 == 1) {
          s.params.repetition_penalty = 1.3f;
          s.params.presence_penalty = 0.5f;
          s.params.frequency_penalty = 0.25f;
          for (int i = 0; i < 50; ++i) s.prompt.push_back(id(rng));
          for (int i = 0; i < 30; ++i) s.output.push_back(id(rng) % 64);  // repeats
        }
      }
      CheckRows(*gpu, specs, vocab, rng, &mismatches, &worst);
      total += rows;
    }
  }
  std::printf("[ sample greedy ] %d/%d rows identical, worst |logprob diff| %.3e\n", total - mismatches,
              total, worst);
}

TEST(SampleParityTest, SeededSamplingMatchesTheHost) {
  auto gpu = gpu_testing::MakeGpuBackend();
  ASSERT_NE(gpu, nullptr);
  std::mt19937 rng(78);
  int mismatches = 0, total = 0;
  double worst = 0.0;
  for (int32_t vocab : {1000, 32000, 128256}) {
    const int32_t rows = vocab > 100000 ? 256 : 512;
    std::vector<RowSpec> specs(static_cast<size_t>(rows));
    std::uniform_int_distribution<int32_t> id(0, vocab - 1);
    for (int32_t r = 0; r < rows; ++r) {
      SamplingParams& sp = specs[static_cast<size_t>(r)].params;
      sp.temperature = r % 5 == 0 ? 0.0f : 0.5f + 0.1f * static_cast<float>(r % 11);
      sp.top_k = (r % 4 == 1) ? 1 + r % 97 : 0;
      sp.top_p = (r % 3 == 1) ? 0.5f + 0.05f * static_cast<float>(r % 9) : 1.0f;
      sp.min_p = (r % 7 == 2) ? 0.05f : 0.0f;
      sp.logprobs = (r % 6 == 0) ? 3 : -1;
      if (r % 8 == 3) {
        sp.repetition_penalty = 1.2f;
        sp.frequency_penalty = 0.3f;
        for (int i = 0; i < 40; ++i) specs[static_cast<size_t>(r)].prompt.push_back(id(rng));
        for (int i = 0; i < 20; ++i) specs[static_cast<size_t>(r)].output.push_back(id(rng) % 32);
      }
    }
    CheckRows(*gpu, specs, vocab, rng, &mismatches, &worst);
    total += rows;
  }
  std::printf("[ sample seeded ] %d/%d rows identical (%.4f%%), worst |logprob diff| %.3e\n",
              total - mismatches, total, 100.0 * (total - mismatches) / total, worst);
  EXPECT_LE(mismatches, total / 100);  // only boundary cases may differ
}

// The exact distribution SampleToken draws from: softmax of logits / t, then top-k, top-p, min-p.
std::vector<double> ReferenceDistribution(const std::vector<float>& logits, const SamplingParams& p) {
  const size_t v = logits.size();
  std::vector<int32_t> order(v);
  std::iota(order.begin(), order.end(), 0);
  std::vector<float> s(v);
  for (size_t i = 0; i < v; ++i) s[i] = logits[i] / p.temperature;
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return s[a] > s[b]; });
  size_t keep = p.top_k > 0 ? std::min<size_t>(v, static_cast<size_t>(p.top_k)) : v;
  std::vector<double> w(v, 0.0);
  double total = 0.0;
  for (size_t j = 0; j < keep; ++j) total += w[order[j]] = std::exp(static_cast<double>(s[order[j]] - s[order[0]]));
  if (p.top_p < 1.0f) {
    double run = 0.0;
    for (size_t j = 0; j < keep; ++j) {
      run += w[order[j]];
      if (run >= p.top_p * total) {
        keep = j + 1;
        break;
      }
    }
  }
  std::vector<double> prob(v, 0.0);
  double sum = 0.0;
  for (size_t j = 0; j < keep; ++j) {
    if (w[order[j]] >= p.min_p * w[order[0]]) sum += prob[order[j]] = w[order[j]];
  }
  for (double& x : prob) x /= sum;
  return prob;
}

TEST(SampleParityTest, ChiSquareAgainstTheReferenceDistribution) {
  auto gpu = gpu_testing::MakeGpuBackend();
  ASSERT_NE(gpu, nullptr);
  std::mt19937 rng(79);
  constexpr int32_t kVocab = 64;
  constexpr int32_t kDraws = 20000;
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::vector<float> row(kVocab);
  for (float& x : row) x = normal(rng);
  struct Case {
    const char* name;
    float temperature;
    int32_t top_k;
    float top_p, min_p;
  };
  for (const Case& c : {Case{"top-k 10", 1.0f, 10, 1.0f, 0.0f}, Case{"top-p 0.8", 0.9f, 0, 0.8f, 0.0f},
                        Case{"min-p 0.1", 1.2f, 0, 1.0f, 0.1f}, Case{"all", 0.7f, 20, 0.9f, 0.05f}}) {
    SamplingParams sp;
    sp.temperature = c.temperature;
    sp.top_k = c.top_k;
    sp.top_p = c.top_p;
    sp.min_p = c.min_p;
    std::vector<float> logits;
    for (int32_t d = 0; d < kDraws; ++d) logits.insert(logits.end(), row.begin(), row.end());
    std::vector<SampleInput> inputs(kDraws);
    for (int32_t d = 0; d < kDraws; ++d) {
      inputs[d].params = &sp;
      inputs[d].seed = 12345;
      inputs[d].step = static_cast<uint64_t>(d);
    }
    auto dev = gpu_testing::Upload(*gpu, logits, DType::kF32, {kDraws, kVocab});
    std::vector<SampleOutput> out(kDraws);
    ASSERT_TRUE(gpu->SampleRows(dev.t, inputs, out).ok());
    std::vector<double> prob = ReferenceDistribution(row, sp);
    std::vector<int64_t> hist(kVocab, 0);
    for (const SampleOutput& o : out) ++hist[static_cast<size_t>(o.token)];
    // Bins with expected count < 5 merged into one; a token outside the support fails outright.
    double chi2 = 0.0, small_expected = 0.0;
    int64_t small_observed = 0, outside = 0;
    int df = -1;
    for (int32_t t = 0; t < kVocab; ++t) {
      const double e = prob[t] * kDraws;
      if (prob[t] == 0.0) {
        outside += hist[t];
      } else if (e < 5.0) {
        small_expected += e;
        small_observed += hist[t];
      } else {
        chi2 += (hist[t] - e) * (hist[t] - e) / e;
        ++df;
      }
    }
    if (small_expected > 0.0) {
      chi2 += (small_observed - small_expected) * (small_observed - small_expected) / small_expected;
      ++df;
    }
    // Critical value at p = 0.001 (Wilson-Hilferty).
    const double k = std::max(df, 1);
    const double crit = k * std::pow(1.0 - 2.0 / (9.0 * k) + 3.09 * std::sqrt(2.0 / (9.0 * k)), 3.0);
    std::printf("[ sample chi2 %s ] chi2 %.2f df %d critical(p=0.001) %.2f, outside support %lld\n", c.name,
                chi2, df, crit, static_cast<long long>(outside));
    EXPECT_EQ(outside, 0) << c.name;
    EXPECT_LT(chi2, crit) << c.name;
  }
}

// Small enough for compute-sanitizer (scripts/gpu-run.sh): every path, ties included.
TEST(SampleParityTest, SmallBatchForSanitizers) {
  auto gpu = gpu_testing::MakeGpuBackend();
  ASSERT_NE(gpu, nullptr);
  std::mt19937 rng(80);
  std::vector<RowSpec> specs(8);
  for (size_t r = 0; r < specs.size(); ++r) {
    SamplingParams& sp = specs[r].params;
    sp.temperature = r % 2 ? 0.9f : 0.0f;
    sp.top_k = r % 4 == 1 ? 5 : 0;
    sp.top_p = r % 4 == 3 ? 0.7f : 1.0f;
    sp.min_p = r == 5 ? 0.1f : 0.0f;
    sp.logprobs = static_cast<int32_t>(r % 3);
    sp.repetition_penalty = r % 3 == 0 ? 1.1f : 1.0f;
    specs[r].prompt = {1, 2, 3, 2};
    specs[r].output = {3, 3, 7};
  }
  int mismatches = 0;
  double worst = 0.0;
  CheckRows(*gpu, specs, 1000, rng, &mismatches, &worst);
  EXPECT_EQ(mismatches, 0);
}

}  // namespace
}  // namespace tandem
