// Helpers for the GPU tests: a CUDA backend, bf16-exact random data, device tensors poisoned with
// NaN before every run, relative error as METHOD.md defines it (NaN never passes).
#pragma once

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend_factory.h"

namespace tandem::gpu_testing {

// The CUDA backend on device 0 (gpu_memory_utilization as given); null plus a test failure if none.
std::unique_ptr<Backend> MakeGpuBackend(double gpu_memory_utilization = 0.9);
// The same with every option given (device and utilization included).
std::unique_ptr<Backend> MakeGpuBackend(const CudaBackendOptions& options);
// Default options plus the small-batch switches that are off by default (decode attention's
// programmatic launch and in-kernel split combine; the streamed GEMV for 2-4 rows as well as 1)
// when `small_batch_attention`.
CudaBackendOptions GpuBackendOptions(double gpu_memory_utilization, bool small_batch_attention);
// Test names for (model, small-batch attention) parameters: "tiny_llama31", "tiny_llama31_small_batch_attention".
std::string ModelAndSmallBatchAttentionName(const ::testing::TestParamInfo<std::tuple<std::string, bool>>& info);

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

// ---- attention batches ------------------------------------------------------------------------------

// One sequence of an attention test batch: `cached` tokens already in the cache, `fresh` new ones.
struct SeqChunk {
  int32_t cached;
  int32_t fresh;
};

struct AttentionCase {
  int32_t head_dim, num_heads, num_kv_heads, block_size, window;
  std::vector<SeqChunk> seqs;
};

// cos / sin of Llama's default RoPE (theta 500000) over the first `rotary_dim` dims, host f32
// [positions, rotary_dim / 2] each.
struct HostRope {
  std::vector<float> cos, sin;
  int32_t rotary_dim = 0;
};
HostRope LlamaRope(int64_t positions, int32_t rotary_dim);

// One decode query per sequence at the end of a context of `len` tokens (len - 1 cached, 1 new).
AttentionCase Decodes(int32_t head_dim, int32_t num_heads, int32_t num_kv_heads, int32_t block_size, int32_t window,
                      const std::vector<int32_t>& lens);

// "hd128 h32/8 bs16 win0 seqs (0+37) ..." for failure messages.
std::string Describe(const AttentionCase& c);

// Host attention metadata for a case; `meta`'s spans point into the vectors (moving the batch
// keeps them valid).
struct AttentionBatch {
  std::vector<int32_t> query_start{0}, context_lens, block_tables, positions;
  std::vector<int64_t> slots;
  AttentionMetadata meta;
  int32_t num_blocks = 0;  // the cache the batch needs: its blocks plus `spare_blocks`
};

// Every sequence's blocks scattered (shuffled ids) over a cache of `spare_blocks` more blocks
// than the batch uses.
AttentionBatch MakeAttentionBatch(const AttentionCase& c, int32_t spare_blocks, std::mt19937& rng);

}  // namespace tandem::gpu_testing
