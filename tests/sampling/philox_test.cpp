#include <gtest/gtest.h>

#include <array>
#include <cstdint>

#include "sampling/sampler.h"

namespace tandem {
namespace {

// Known-answer vectors of Random123 (DEShawResearch/random123, tests/kat_vectors):
//   philox4x32 10 <counter[4]> <key[2]> <expected[4]>
struct PhiloxKat {
  std::array<uint32_t, 4> counter;
  std::array<uint32_t, 2> key;
  std::array<uint32_t, 4> expected;
};

TEST(PhiloxTest, Random123KnownAnswers) {
  const PhiloxKat kats[] = {
      {{0x00000000, 0x00000000, 0x00000000, 0x00000000},
       {0x00000000, 0x00000000},
       {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const PhiloxKat& kat : kats) {
    EXPECT_EQ(Philox4x32(kat.counter, kat.key), kat.expected) << std::hex << kat.counter[0];
  }
}

TEST(PhiloxTest, UniformIsTheTop24BitsOfTheFirstWord) {
  const uint64_t seed = 0x0123456789abcdefull;
  const uint64_t steps[] = {0, 1, 2, 0xffffffffull, 0x100000000ull, 0xfedcba9876543210ull};
  for (uint64_t step : steps) {
    uint32_t word =
        Philox4x32({static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32), 0, 0},
                   {0x89abcdefu, 0x01234567u})[0];
    float expected = static_cast<float>(static_cast<double>(word >> 8) / 16777216.0);
    EXPECT_EQ(PhiloxUniform(seed, step), expected) << step;
  }
  // The all-zero key and counter give word 0x6627e8d5 (first KAT): u = 0x6627e8 / 2^24.
  EXPECT_EQ(PhiloxUniform(0, 0), static_cast<float>(0x6627e8) / 16777216.0f);
}

TEST(PhiloxTest, UniformIsInUnitIntervalAndEvenlySpread) {
  constexpr int kBins = 16;
  constexpr int kDraws = 64000;
  std::array<int, kBins> counts{};
  for (int step = 0; step < kDraws; ++step) {
    float u = PhiloxUniform(42, static_cast<uint64_t>(step));
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    ++counts[static_cast<int>(u * kBins)];
  }
  // Chi-square, 15 degrees of freedom: 37.7 is the 0.999 quantile. Deterministic, not flaky.
  double expected = static_cast<double>(kDraws) / kBins;
  double chi2 = 0.0;
  for (int c : counts) chi2 += (c - expected) * (c - expected) / expected;
  EXPECT_LT(chi2, 37.7);
}

TEST(PhiloxTest, SeedWordsBothMatter) {
  EXPECT_NE(PhiloxUniform(1, 0), PhiloxUniform(1ull << 32, 0));
  EXPECT_NE(PhiloxUniform(7, 1), PhiloxUniform(7, 1ull << 32));
}

}  // namespace
}  // namespace tandem
