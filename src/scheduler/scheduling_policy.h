// SchedulingPolicy: who runs first, who waits, who is preempted. Pure ordering decisions over
// Sequences, no side effects, so SLO-aware and fairness policies replace FCFS without touching the
// scheduler mechanism or the engine loop.
#pragma once

#include <memory>
#include <string_view>

#include "scheduler/sequence.h"
#include "tandem/status.h"

namespace tandem {

class SchedulingPolicy {
 public:
  virtual ~SchedulingPolicy() = default;
  virtual std::string_view name() const = 0;
  // Strict weak order: true if `a` should be served before `b`. Admission takes waiting sequences
  // in this order; preemption evicts running sequences in the reverse order.
  virtual bool Precedes(const Sequence& a, const Sequence& b) const = 0;
};

// First come, first served: arrival time, then sequence id.
class FcfsPolicy final : public SchedulingPolicy {
 public:
  std::string_view name() const override { return "fcfs"; }
  bool Precedes(const Sequence& a, const Sequence& b) const override;
};

// Request priority (lower first), then FCFS.
class PriorityPolicy final : public SchedulingPolicy {
 public:
  std::string_view name() const override { return "priority"; }
  bool Precedes(const Sequence& a, const Sequence& b) const override;
};

// "fcfs" or "priority"; InvalidArgument lists the known names otherwise.
StatusOr<std::unique_ptr<SchedulingPolicy>> MakeSchedulingPolicy(std::string_view name);

}  // namespace tandem
