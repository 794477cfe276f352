// Helpers shared by the GPU benchmarks: medians, device event timing, random bf16 device buffers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "tandem/status.h"

namespace tandem::bench {

// The median (upper for even sizes); 0 for none.
double Median(std::vector<double> v);

// Device events around a region of the stream.
class EventTimer {
 public:
  EventTimer() = default;
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  Status Init();
  Status Start(cudaStream_t s);
  // Seconds since Start, after waiting for the stream.
  StatusOr<double> Stop(cudaStream_t s);

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

struct DeviceMem {
  std::unique_ptr<DeviceBuffer> buffer;
  void* data() const { return buffer->data(); }
};

// `elems` bf16 values uniform in [-scale, scale] (seeded) on `backend`'s device, filled on `stream`.
StatusOr<DeviceMem> AllocRandom(Backend& backend, cudaStream_t stream, size_t elems, uint64_t seed, float scale);

}  // namespace tandem::bench
