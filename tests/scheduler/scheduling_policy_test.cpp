// SchedulingPolicy: FCFS (arrival time, then sequence id) and priority (lower first, then FCFS)
// orders, both strict weak orders; MakeSchedulingPolicy by name.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <random>
#include <vector>

#include "scheduler/scheduling_policy.h"

namespace tandem {
namespace {

const Clock::time_point kT0 = Clock::time_point{} + std::chrono::hours(1);

std::unique_ptr<Sequence> Seq(SeqId id, int64_t arrival_us, int32_t priority = 0) {
  auto r = std::make_shared<Request>();
  r->request_id = std::to_string(id);
  r->prompt_token_ids = {1, 2};
  r->priority = priority;
  r->arrival_time = kT0 + std::chrono::microseconds(arrival_us);
  return std::make_unique<Sequence>(id, std::move(r), 0);
}

TEST(FcfsPolicyTest, ArrivalThenId) {
  FcfsPolicy fcfs;
  EXPECT_EQ(fcfs.name(), "fcfs");
  auto early = Seq(9, 10), late = Seq(1, 20);
  EXPECT_TRUE(fcfs.Precedes(*early, *late));   // earlier arrival wins over the smaller id
  EXPECT_FALSE(fcfs.Precedes(*late, *early));
  auto a = Seq(3, 10), b = Seq(4, 10);
  EXPECT_TRUE(fcfs.Precedes(*a, *b));  // same arrival: smaller id first
  EXPECT_FALSE(fcfs.Precedes(*b, *a));
  EXPECT_FALSE(fcfs.Precedes(*a, *a));  // irreflexive
  // Priority is ignored by FCFS.
  auto urgent = Seq(5, 30, -100);
  EXPECT_TRUE(fcfs.Precedes(*early, *urgent));
}

TEST(PriorityPolicyTest, PriorityThenFcfs) {
  PriorityPolicy prio;
  EXPECT_EQ(prio.name(), "priority");
  auto urgent_late = Seq(1, 100, -1), normal_early = Seq(2, 0, 0);
  EXPECT_TRUE(prio.Precedes(*urgent_late, *normal_early));
  EXPECT_FALSE(prio.Precedes(*normal_early, *urgent_late));
  auto x = Seq(7, 5, 3), y = Seq(8, 6, 3);
  EXPECT_TRUE(prio.Precedes(*x, *y));  // tie on priority: arrival
  auto z = Seq(6, 6, 3);
  EXPECT_TRUE(prio.Precedes(*z, *y));  // tie on priority and arrival: id
  EXPECT_FALSE(prio.Precedes(*y, *y));
}

// Sorting random sequences with each policy gives the order of an independently written key.
TEST(SchedulingPolicyTest, SortMatchesIndependentKey) {
  std::mt19937 rng(1234);
  std::vector<std::unique_ptr<Sequence>> owned;
  std::vector<Sequence*> seqs;
  for (SeqId id = 0; id < 200; ++id) {
    owned.push_back(Seq(id, static_cast<int64_t>(rng() % 20), static_cast<int32_t>(rng() % 4) - 1));
    seqs.push_back(owned.back().get());
  }
  std::shuffle(seqs.begin(), seqs.end(), rng);
  auto key = [](const Sequence* s, bool use_priority) {
    return std::tuple(use_priority ? s->request().priority : 0, s->request().arrival_time, s->id());
  };
  for (bool use_priority : {false, true}) {
    std::unique_ptr<SchedulingPolicy> policy;
    if (use_priority) {
      policy = std::make_unique<PriorityPolicy>();
    } else {
      policy = std::make_unique<FcfsPolicy>();
    }
    auto sorted = seqs;
    std::sort(sorted.begin(), sorted.end(),
              [&](const Sequence* a, const Sequence* b) { return policy->Precedes(*a, *b); });
    auto expected = seqs;
    std::sort(expected.begin(), expected.end(), [&](const Sequence* a, const Sequence* b) {
      return key(a, use_priority) < key(b, use_priority);
    });
    EXPECT_EQ(sorted, expected) << policy->name();
  }
}

TEST(MakeSchedulingPolicyTest, KnownAndUnknownNames) {
  auto fcfs = MakeSchedulingPolicy("fcfs");
  ASSERT_TRUE(fcfs.ok());
  EXPECT_EQ((*fcfs)->name(), "fcfs");
  auto prio = MakeSchedulingPolicy("priority");
  ASSERT_TRUE(prio.ok());
  EXPECT_EQ((*prio)->name(), "priority");
  auto bad = MakeSchedulingPolicy("lifo");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("lifo"), std::string::npos);
  EXPECT_NE(bad.status().message().find("fcfs"), std::string::npos);
  EXPECT_NE(bad.status().message().find("priority"), std::string::npos);
}

}  // namespace
}  // namespace tandem
