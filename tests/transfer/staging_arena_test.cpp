// StagingArena: first fit, alignment, merging on free, exhaustion, and a randomized run against a
// byte map that checks no two live ranges overlap and the arena is whole at the end.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "transfer/staging_arena.h"

namespace tandem {
namespace {

TEST(StagingArenaTest, AlignsAndExhausts) {
  StagingArena arena(1000, 256);  // 768 usable bytes: three 256-byte units
  EXPECT_EQ(arena.capacity(), 768u);
  auto a = arena.Allocate(1);
  auto b = arena.Allocate(257);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(*a, 0u);
  EXPECT_EQ(*b, 256u);
  EXPECT_EQ(arena.bytes_in_use(), 768u);
  EXPECT_FALSE(arena.Allocate(1));
  arena.Free(*a);
  EXPECT_FALSE(arena.Allocate(257));  // only one unit is free
  auto c = arena.Allocate(256);
  ASSERT_TRUE(c);
  EXPECT_EQ(*c, 0u);
  arena.Free(*b);
  arena.Free(*c);
  EXPECT_EQ(arena.bytes_in_use(), 0u);
  auto whole = arena.Allocate(768);  // the free ranges merged back into one
  ASSERT_TRUE(whole);
  EXPECT_EQ(*whole, 0u);
}

TEST(StagingArenaTest, MergesWithBothNeighbours) {
  StagingArena arena(4 * 64, 64);
  auto a = arena.Allocate(64), b = arena.Allocate(64), c = arena.Allocate(64), d = arena.Allocate(64);
  ASSERT_TRUE(a && b && c && d);
  arena.Free(*a);
  arena.Free(*c);
  EXPECT_FALSE(arena.Allocate(128));
  arena.Free(*b);  // joins a and c
  auto abc = arena.Allocate(192);
  ASSERT_TRUE(abc);
  EXPECT_EQ(*abc, 0u);
  arena.Free(*abc);
  arena.Free(*d);
  EXPECT_EQ(arena.bytes_in_use(), 0u);
}

TEST(StagingArenaTest, RandomizedRangesNeverOverlap) {
  constexpr size_t kCapacity = 64 * 1024, kAlign = 128;
  StagingArena arena(kCapacity, kAlign);
  std::vector<int> owner(kCapacity, -1);
  std::vector<std::pair<size_t, size_t>> live;  // offset, size
  std::mt19937 rng(7);
  for (int step = 0; step < 5000; ++step) {
    if (!live.empty() && (rng() % 2 == 0 || live.size() > 40)) {
      const size_t i = rng() % live.size();
      for (size_t b = live[i].first; b < live[i].first + live[i].second; ++b) owner[b] = -1;
      arena.Free(live[i].first);
      live.erase(live.begin() + static_cast<long>(i));
      continue;
    }
    const size_t size = 1 + rng() % 4000;
    auto offset = arena.Allocate(size);
    if (!offset) continue;
    ASSERT_EQ(*offset % kAlign, 0u);
    ASSERT_LE(*offset + size, kCapacity);
    for (size_t b = *offset; b < *offset + size; ++b) {
      ASSERT_EQ(owner[b], -1) << "byte " << b << " handed out twice";
      owner[b] = step;
    }
    live.emplace_back(*offset, size);
  }
  for (auto& [offset, size] : live) arena.Free(offset);
  EXPECT_EQ(arena.bytes_in_use(), 0u);
  EXPECT_TRUE(arena.Allocate(kCapacity));
}

}  // namespace
}  // namespace tandem
