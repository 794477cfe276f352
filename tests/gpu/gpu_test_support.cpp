#include "gpu_test_support.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <cstdlib>
#include <limits>

#include "backend/cuda/cuda_backend_factory.h"
#include "kernels/small_m_gemv.cuh"
#include "common/half.h"
#include "support/testdata.h"

namespace tandem::gpu_testing {

std::unique_ptr<Backend> MakeGpuBackend(double gpu_memory_utilization) {
  CudaBackendOptions options;
  options.gpu_memory_utilization = gpu_memory_utilization;
  return MakeGpuBackend(options);
}

CudaBackendOptions GpuBackendOptions(double gpu_memory_utilization, bool small_batch_attention) {
  CudaBackendOptions options;
  options.gpu_memory_utilization = gpu_memory_utilization;
  options.programmatic_decode_attention = small_batch_attention;
  options.decode_attention_combines_in_kernel = small_batch_attention;
  options.small_m_gemv_streamed_max_rows = small_batch_attention ? kernels::kSmallMGemvMaxRows : 1;
  return options;
}

std::string ModelAndSmallBatchAttentionName(const ::testing::TestParamInfo<std::tuple<std::string, bool>>& info) {
  std::string name = std::get<0>(info.param);
  std::replace(name.begin(), name.end(), '-', '_');
  return std::get<1>(info.param) ? name + "_small_batch_attention" : name;
}

std::unique_ptr<Backend> MakeGpuBackend(const CudaBackendOptions& options) {
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

HostRope LlamaRope(int64_t positions, int32_t rotary_dim) {
  HostRope r{{}, {}, rotary_dim};
  const int64_t half = rotary_dim / 2;
  r.cos.resize(positions * half);
  r.sin.resize(positions * half);
  for (int64_t p = 0; p < positions; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const double freq = std::pow(500000.0, -2.0 * static_cast<double>(i) / static_cast<double>(rotary_dim));
      r.cos[p * half + i] = static_cast<float>(std::cos(static_cast<double>(p) * freq));
      r.sin[p * half + i] = static_cast<float>(std::sin(static_cast<double>(p) * freq));
    }
  }
  return r;
}

AttentionCase Decodes(int32_t head_dim, int32_t num_heads, int32_t num_kv_heads, int32_t block_size, int32_t window,
                      const std::vector<int32_t>& lens) {
  AttentionCase c{head_dim, num_heads, num_kv_heads, block_size, window, {}};
  for (int32_t len : lens) c.seqs.push_back({len - 1, 1});
  return c;
}

std::string Describe(const AttentionCase& c) {
  std::string s = "hd" + std::to_string(c.head_dim) + " h" + std::to_string(c.num_heads) + "/" +
                  std::to_string(c.num_kv_heads) + " bs" + std::to_string(c.block_size) + " win" +
                  std::to_string(c.window) + " seqs";
  for (const SeqChunk& q : c.seqs) s += " (" + std::to_string(q.cached) + "+" + std::to_string(q.fresh) + ")";
  return s;
}

AttentionBatch MakeAttentionBatch(const AttentionCase& c, int32_t spare_blocks, std::mt19937& rng) {
  AttentionBatch b;
  int32_t max_blocks = 0, total_blocks = 0, max_q = 0, max_ctx = 0;
  for (const SeqChunk& s : c.seqs) {
    const int32_t nb = (s.cached + s.fresh + c.block_size - 1) / c.block_size;
    max_blocks = std::max(max_blocks, nb);
    total_blocks += nb;
  }
  b.num_blocks = total_blocks + spare_blocks;
  std::vector<int32_t> ids(static_cast<size_t>(b.num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  size_t next = 0;
  b.block_tables.assign(c.seqs.size() * static_cast<size_t>(max_blocks), 0);
  for (size_t i = 0; i < c.seqs.size(); ++i) {
    const SeqChunk s = c.seqs[i];
    const int32_t ctx = s.cached + s.fresh;
    int32_t* table = b.block_tables.data() + i * static_cast<size_t>(max_blocks);
    for (int32_t j = 0; j < (ctx + c.block_size - 1) / c.block_size; ++j) table[j] = ids[next++];
    for (int32_t p = s.cached; p < ctx; ++p) {
      b.positions.push_back(p);
      b.slots.push_back(static_cast<int64_t>(table[p / c.block_size]) * c.block_size + p % c.block_size);
    }
    b.query_start.push_back(static_cast<int32_t>(b.positions.size()));
    b.context_lens.push_back(ctx);
    max_q = std::max(max_q, s.fresh);
    max_ctx = std::max(max_ctx, ctx);
  }
  AttentionMetadata& m = b.meta;
  m.num_seqs = static_cast<int32_t>(c.seqs.size());
  m.num_tokens = static_cast<int32_t>(b.positions.size());
  m.query_start = b.query_start;
  m.context_lens = b.context_lens;
  m.block_tables = b.block_tables;
  m.max_blocks_per_seq = max_blocks;
  m.positions = b.positions;
  m.slot_mapping = b.slots;
  m.block_size = c.block_size;
  m.max_query_len = max_q;
  m.max_context_len = max_ctx;
  return b;
}

}  // namespace tandem::gpu_testing
