// CudaBackend::Create refuses absurd options with a clear error before it touches a device.
#include <gtest/gtest.h>

#include "backend/cuda/cuda_backend_factory.h"

namespace tandem {
namespace {

TEST(CudaBackendOptionsTest, AbsurdOptionsAreRefusedWithInvalidArgument) {
  for (double utilization : {0.0, -0.5, 1.5}) {
    CudaBackendOptions options;
    options.gpu_memory_utilization = utilization;
    auto backend = MakeCudaBackend(options);
    ASSERT_FALSE(backend.ok()) << utilization;
    EXPECT_EQ(backend.status().code(), StatusCode::kInvalidArgument) << backend.status().ToString();
  }
  for (int columns : {-1, 3}) {
    CudaBackendOptions options;
    options.small_m_gemv_columns_per_warp = columns;
    auto backend = MakeCudaBackend(options);
    ASSERT_FALSE(backend.ok()) << columns;
    EXPECT_EQ(backend.status().code(), StatusCode::kInvalidArgument) << backend.status().ToString();
    EXPECT_NE(backend.status().ToString().find("small_m_gemv_columns_per_warp"), std::string::npos);
  }
  for (int keys : {0, 8, 24, 4112}) {
    CudaBackendOptions options;
    options.decode_attention_min_split_keys = keys;
    auto backend = MakeCudaBackend(options);
    ASSERT_FALSE(backend.ok()) << keys;
    EXPECT_EQ(backend.status().code(), StatusCode::kInvalidArgument) << backend.status().ToString();
    EXPECT_NE(backend.status().ToString().find("decode_attention_min_split_keys"), std::string::npos);
  }
}

}  // namespace
}  // namespace tandem
