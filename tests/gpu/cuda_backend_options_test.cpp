// CudaBackend::Create refuses absurd options with a clear error before it touches a device.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "backend/cuda/cuda_backend_factory.h"

namespace tandem {
namespace {

// Creating a backend with `set` applied to default options fails with InvalidArgument naming `field`.
void ExpectRefused(const std::function<void(CudaBackendOptions&)>& set, const std::string& field,
                   const std::string& value) {
  CudaBackendOptions options;
  set(options);
  auto backend = MakeCudaBackend(options);
  ASSERT_FALSE(backend.ok()) << field << " = " << value;
  EXPECT_EQ(backend.status().code(), StatusCode::kInvalidArgument) << backend.status().ToString();
  EXPECT_NE(backend.status().ToString().find(field), std::string::npos) << backend.status().ToString();
}

TEST(CudaBackendOptionsTest, AbsurdOptionsAreRefusedWithInvalidArgument) {
  for (double utilization : {0.0, -0.5, 1.5}) {
    ExpectRefused([&](CudaBackendOptions& o) { o.gpu_memory_utilization = utilization; }, "gpu_memory_utilization",
                  std::to_string(utilization));
  }
  for (int columns : {-1, 3}) {
    ExpectRefused([&](CudaBackendOptions& o) { o.small_m_gemv_columns_per_warp = columns; },
                  "small_m_gemv_columns_per_warp", std::to_string(columns));
  }
  for (int segments : {-2, 4}) {
    ExpectRefused([&](CudaBackendOptions& o) { o.small_m_gemv_streamed_prewait_segments = segments; },
                  "small_m_gemv_streamed_prewait_segments", std::to_string(segments));
  }
  for (int keys : {0, 8, 24, 4112}) {
    ExpectRefused([&](CudaBackendOptions& o) { o.decode_attention_min_split_keys = keys; },
                  "decode_attention_min_split_keys", std::to_string(keys));
  }
}

}  // namespace
}  // namespace tandem
