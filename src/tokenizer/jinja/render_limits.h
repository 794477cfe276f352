// RenderLimits: bounds that keep an untrusted template from looping forever or exhausting memory.
// Exceeding one is a clean error (Status kResourceExhausted), never a crash.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tandem::jinja {

struct RenderLimits {
  int64_t max_steps = 20'000'000;          // statements executed + expressions evaluated
  size_t max_output_bytes = 16u << 20;     // rendered text; also any one string built on the way
  size_t max_list_items = 1u << 20;        // items of any one list built on the way
  int max_call_depth = 64;                 // nested macro calls (jinja2 hits RecursionError too)
  int64_t max_range = 100'000;             // jinja2's sandbox MAX_RANGE
};

}  // namespace tandem::jinja
