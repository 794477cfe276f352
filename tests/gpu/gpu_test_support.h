// Helpers for the GPU tests: a CUDA backend, bf16-exact random data, device tensors poisoned with
// NaN before every run, relative error as METHOD.md defines it (NaN never passes).
#pragma once

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <memory>
#include <random>
#include <vector>

#include "backend/backend.h"

namespace tandem::gpu_testing {

// The CUDA backend on device 0 (gpu_memory_utilization as given); null plus a test failure if none.
std::unique_ptr<Backend> MakeGpuBackend(double gpu_memory_utilization = 0.9);

// Reference data: $TANDEM_TESTDATA_DIR when set (the GPU machine gets a bundled copy), else the
// directory compiled in.
std::filesystem::path GpuTestdataDir();
std::filesystem::path GpuModelDir(const std::string& name);

// n values uniform in [-scale, scale], rounded to bf16 so CPU (f32) and GPU (bf16) see the same.
std::vector<float> RandomBf16(size_t n, std::mt19937& rng, float scale = 1.0f);

struct DeviceTensor {
  std::unique_ptr<DeviceBuffer> buffer;
  Tensor t;
};

// A device tensor of `dtype` (kBF16 or kF32) holding `values`.
DeviceTensor Upload(Backend& backend, const std::vector<float>& values, DType dtype,
                    std::initializer_list<int64_t> dims);
// A device tensor filled with NaN.
DeviceTensor Poisoned(Backend& backend, DType dtype, std::initializer_list<int64_t> dims);
// Contents as float (bf16 widened).
std::vector<float> Download(Backend& backend, const Tensor& t);

// ||out - ref|| / ||ref||; +inf when out has a NaN/inf or the sizes differ.
double RelError(const std::vector<float>& out, const std::vector<float>& ref);

// A host f32 tensor view over `values`.
inline Tensor HostF32(std::vector<float>& values, std::initializer_list<int64_t> dims) {
  return Tensor(values.data(), DType::kF32, dims);
}

}  // namespace tandem::gpu_testing
