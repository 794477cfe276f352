// Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2, 3", SC'11),
// checked against the Random123 known-answer vectors in tests/sampling/philox_test.cpp.
#include <array>
#include <cstdint>

#include "sampling/sampler.h"

namespace tandem {
namespace {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;  // round multipliers
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // key schedule (golden ratio, sqrt(3) - 1)
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

}  // namespace

std::array<uint32_t, 4> Philox4x32(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key) {
  std::array<uint32_t, 4> x = counter;
  for (int round = 0; round < kPhiloxRounds; ++round) {
    if (round > 0) {
      key[0] += kPhiloxW0;
      key[1] += kPhiloxW1;
    }
    uint64_t p0 = uint64_t{kPhiloxM0} * x[0];
    uint64_t p1 = uint64_t{kPhiloxM1} * x[2];
    uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    x = {hi1 ^ x[1] ^ key[0], lo1, hi0 ^ x[3] ^ key[1], lo0};
  }
  return x;
}

float PhiloxUniform(uint64_t seed, uint64_t step) {
  std::array<uint32_t, 2> key = {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  std::array<uint32_t, 4> counter = {static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32),
                                     0u, 0u};
  uint32_t bits = Philox4x32(counter, key)[0];
  // The top 24 bits: every value k * 2^-24 is exact in float, so a CUDA kernel gets the same u.
  return static_cast<float>(bits >> 8) * 0x1.0p-24f;
}

}  // namespace tandem
