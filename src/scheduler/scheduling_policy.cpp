#include "scheduler/scheduling_policy.h"

#include <string>

namespace tandem {

bool FcfsPolicy::Precedes(const Sequence& a, const Sequence& b) const {
  if (a.request().arrival_time != b.request().arrival_time) {
    return a.request().arrival_time < b.request().arrival_time;
  }
  return a.id() < b.id();
}

bool PriorityPolicy::Precedes(const Sequence& a, const Sequence& b) const {
  if (a.request().priority != b.request().priority) {
    return a.request().priority < b.request().priority;
  }
  return FcfsPolicy().Precedes(a, b);
}

StatusOr<std::unique_ptr<SchedulingPolicy>> MakeSchedulingPolicy(std::string_view name) {
  if (name == "fcfs") return std::unique_ptr<SchedulingPolicy>(std::make_unique<FcfsPolicy>());
  if (name == "priority") {
    return std::unique_ptr<SchedulingPolicy>(std::make_unique<PriorityPolicy>());
  }
  return InvalidArgumentError("unknown scheduling policy '" + std::string(name) +
                              "'; known: fcfs, priority");
}

}  // namespace tandem
