#include "gpu_test_support.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>

#include "backend/cuda/cuda_backend_factory.h"
#include "common/half.h"
#include "support/testdata.h"

namespace tandem::gpu_testing {

std::unique_ptr<Backend> MakeGpuBackend(double gpu_memory_utilization) {
  CudaBackendOptions options;
  options.gpu_memory_utilization = gpu_memory_utilization;
  auto backend = MakeCudaBackend(options);
  if (!backend.ok()) {
    ADD_FAILURE() << backend.status().ToString();
    return nullptr;
  }
  return std::move(backend).value();
}

std::filesystem::path GpuTestdataDir() {
  if (const char* dir = std::getenv("TANDEM_TESTDATA_DIR"); dir != nullptr && *dir != '\0') {
    return dir;
  }
  return testing::TestdataDir();
}

std::filesystem::path GpuModelDir(const std::string& name) { return GpuTestdataDir() / "models" / name; }

std::vector<float> RandomBf16(size_t n, std::mt19937& rng, float scale) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = Bf16ToF32(F32ToBf16(dist(rng)));
  return v;
}

DeviceTensor Upload(Backend& backend, const std::vector<float>& values, DType dtype,
                    std::initializer_list<int64_t> dims) {
  DeviceTensor d;
  d.t = Tensor(nullptr, dtype, dims);
  EXPECT_EQ(static_cast<size_t>(d.t.numel()), values.size());
  auto buffer = backend.Allocate(d.t.nbytes());
  EXPECT_TRUE(buffer.ok()) << buffer.status().ToString();
  d.buffer = std::move(buffer).value();
  d.t.data = d.buffer->data();
  Status s;
  if (dtype == DType::kBF16) {
    std::vector<uint16_t> bits(values.size());
    for (size_t i = 0; i < values.size(); ++i) bits[i] = F32ToBf16(values[i]);
    s = backend.CopyToDevice(bits.data(), d.t);
  } else {
    EXPECT_EQ(dtype, DType::kF32);
    s = backend.CopyToDevice(values.data(), d.t);
  }
  EXPECT_TRUE(s.ok()) << s.ToString();
  return d;
}

DeviceTensor Poisoned(Backend& backend, DType dtype, std::initializer_list<int64_t> dims) {
  DeviceTensor d;
  d.t = Tensor(nullptr, dtype, dims);
  auto buffer = backend.Allocate(d.t.nbytes());
  EXPECT_TRUE(buffer.ok()) << buffer.status().ToString();
  d.buffer = std::move(buffer).value();
  d.t.data = d.buffer->data();
  std::vector<unsigned char> nan_bytes(d.t.nbytes(), 0xff);  // all-ones: NaN in bf16 and f32
  Status s = backend.CopyToDevice(nan_bytes.data(), d.t);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return d;
}

std::vector<float> Download(Backend& backend, const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  if (t.dtype == DType::kBF16) {
    std::vector<uint16_t> bits(out.size());
    Status s = backend.CopyToHost(t, bits.data());
    EXPECT_TRUE(s.ok()) << s.ToString();
    for (size_t i = 0; i < out.size(); ++i) out[i] = Bf16ToF32(bits[i]);
  } else {
    EXPECT_EQ(t.dtype, DType::kF32);
    Status s = backend.CopyToHost(t, out.data());
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  return out;
}

double RelError(const std::vector<float>& out, const std::vector<float>& ref) {
  if (out.size() != ref.size()) return std::numeric_limits<double>::infinity();
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) return std::numeric_limits<double>::infinity();
    const double d = static_cast<double>(out[i]) - ref[i];
    diff += d * d;
    norm += static_cast<double>(ref[i]) * ref[i];
  }
  if (norm == 0.0) return diff == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(diff / norm);
}

}  // namespace tandem::gpu_testing
