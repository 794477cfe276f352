// The split-KV decode attention kernels (kernels/paged_decode_attention.cu) launched directly, each
// kernel (tensor-core, CUDA-core, and the engine's choice) at every split count a policy can pick
// (one, a few, more splits than a short sequence has keys, the policy's own), against the CPU
// backend's attention: fresh random inputs per case, the output and the split workspace poisoned
// with NaN before each launch and every output element compared, ||out - ref|| / ||ref|| <= 1e-2.
// Shapes: head dims 64 / 128 / 256, GQA groups 1-8 (3 and 5 padded up), block sizes that hold whole
// 16-key tiles and ones that do not, odd lengths, sliding windows, contexts of 8k to 32k.
// The small-batch path (1-4 sequences; CudaBackendOptions::programmatic_decode_attention and
// decode_attention_combines_in_kernel) the same way, its counters checked zero after every launch,
// and as the engine runs it: small-M GEMV -> RoPE -> attention, all programmatic, the new keys and
// q poisoned until RoPE writes them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_backend_factory.h"
#include "gpu_test_support.h"
#include "kernels/paged_decode_attention.cuh"

namespace tandem {
namespace {

using gpu_testing::Download;
using gpu_testing::HostF32;
using gpu_testing::Poisoned;
using gpu_testing::RandomBf16;
using gpu_testing::RelError;
using gpu_testing::Upload;
using kernels::PagedDecodeKernel;

constexpr double kBf16Tolerance = 1e-2;

using DecodeCase = gpu_testing::AttentionCase;
using gpu_testing::Describe;

using gpu_testing::Decodes;

std::vector<DecodeCase> Cases() {
  std::vector<DecodeCase> cases;
  const std::vector<int32_t> mixed{1, 17, 300, 1023, 64, 65, 16};
  for (int32_t hd : {64, 128, 256}) {
    for (int32_t group : {1, 2, 3, 4, 5, 8}) {
      cases.push_back(Decodes(hd, 2 * group, 2, 16, 0, mixed));
    }
  }
  // Block sizes: whole tiles of 32, and blocks that split tiles (8, 24, 1) or are odd (5).
  for (int32_t bs : {32, 8, 24, 5, 1}) {
    cases.push_back(Decodes(128, 8, 2, bs, 0, {3, 129, 700, 33}));
    cases.push_back(Decodes(64, 8, 1, bs, 0, {2, 250, 31}));
  }
  // Sliding windows shorter and longer than a split, unaligned with the tiles.
  cases.push_back(Decodes(128, 32, 8, 16, 100, {3000, 50, 1500, 101}));
  cases.push_back(Decodes(64, 16, 2, 32, 1000, {3001, 999, 1000}));
  // Long contexts (8k-32k), Llama-3.1-8B's head shape.
  cases.push_back(Decodes(128, 8, 2, 16, 0, {8191, 32768, 77}));
  cases.push_back(Decodes(64, 16, 2, 32, 0, {16385, 9000}));
  return cases;
}

// How a launch takes the small-batch path (kernels/paged_decode_attention.cuh).
struct SmallBatchPath {
  bool programmatic = false;
  bool in_kernel_combine = false;  // split_counters given
  int32_t min_split_keys = kernels::kPagedDecodeMinSplitKeys;
};

class DecodeAttentionParityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gpu_ = gpu_testing::MakeGpuBackend();
    ASSERT_NE(gpu_, nullptr);
    cuda_ = dynamic_cast<CudaBackend*>(gpu_.get());
    ASSERT_NE(cuda_, nullptr);
    cpu_ = std::make_unique<CpuBackend>(CpuBackendConfig{0});
  }
  void TearDown() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::printf("[ kernel %s ] worst rel err %.3e over %d launches\n", info->name(), worst_, checks_);
  }

  // Int32 values on the device (returned buffer owns them).
  std::unique_ptr<DeviceBuffer> UploadI32(const std::vector<int32_t>& values) {
    auto buf = gpu_->Allocate(std::max<size_t>(4, values.size() * 4));
    EXPECT_TRUE(buf.ok());
    if (!buf.ok()) return nullptr;
    const Tensor t((*buf)->data(), DType::kI32, {static_cast<int64_t>(values.size())});
    if (!values.empty()) {
      EXPECT_TRUE(gpu_->CopyToDevice(values.data(), t).ok());
    }
    return std::move(*buf);
  }

  void Check(const DecodeCase& c, std::vector<int32_t> split_counts = {1, 2, 3, 8, 64}, SmallBatchPath path = {}) {
    const gpu_testing::AttentionBatch b = gpu_testing::MakeAttentionBatch(c, 4, rng_);
    const int64_t n = b.meta.num_seqs, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
    const int64_t cache_elems = static_cast<int64_t>(b.num_blocks) * nkv * c.block_size * hd;
    auto q = RandomBf16(n * nh * hd, rng_, 2.0f);
    auto kc = RandomBf16(cache_elems, rng_, 2.0f), vc = RandomBf16(cache_elems, rng_);
    const AttentionParams params{c.num_heads, c.num_kv_heads, c.head_dim,
                                 1.0f / std::sqrt(static_cast<float>(hd)), c.window};
    std::vector<float> ref(n * nh * hd);
    const KvLayerView cpu_cache{HostF32(kc, {b.num_blocks, nkv, c.block_size, hd}),
                                HostF32(vc, {b.num_blocks, nkv, c.block_size, hd})};
    ASSERT_TRUE(cpu_->Attention(HostF32(q, {n, nh * hd}), cpu_cache, params, b.meta, HostF32(ref, {n, nh * hd})).ok());
    auto dq = Upload(*gpu_, q, DType::kBF16, {n, nh * hd});
    auto dkc = Upload(*gpu_, kc, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
    auto dvc = Upload(*gpu_, vc, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
    auto tables = UploadI32(b.block_tables);
    auto positions = UploadI32(b.positions);
    ASSERT_TRUE(tables && positions);
    int sms = 0;
    ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, cuda_->device()), cudaSuccess);
    const int32_t max_ctx = b.meta.max_context_len;
    const int32_t policy = kernels::PagedDecodeAttentionSplits(static_cast<int32_t>(n), c.num_kv_heads, max_ctx, sms);
    split_counts.push_back(policy);
    std::vector<PagedDecodeKernel> kinds{PagedDecodeKernel::kAuto, PagedDecodeKernel::kCudaCore};
    if (hd != 256) kinds.push_back(PagedDecodeKernel::kTensorCore);
    // In-kernel combine: zeroed counters, reused by every launch below (each must leave them zero).
    const size_t num_counters = kernels::PagedDecodeAttentionSplitCounters(static_cast<int32_t>(n), c.num_kv_heads);
    std::unique_ptr<DeviceBuffer> counters;
    if (path.in_kernel_combine) {
      counters = UploadI32(std::vector<int32_t>(num_counters, 0));
      ASSERT_TRUE(counters);
    }
    for (PagedDecodeKernel kind : kinds) {
      for (int32_t splits : split_counts) {
        const std::string what = Describe(c) + " kernel " + std::to_string(static_cast<int>(kind)) + " splits " +
                                 std::to_string(splits);
        auto dout = Poisoned(*gpu_, DType::kBF16, {n, nh * hd});
        const int64_t floats = static_cast<int64_t>(
            kernels::PagedDecodeAttentionPartialFloats(static_cast<int32_t>(n), c.num_heads, c.head_dim, splits));
        auto partial = Poisoned(*gpu_, DType::kF32, {std::max<int64_t>(1, floats)});
        kernels::PagedDecodeAttentionParams p;
        p.q = static_cast<const __nv_bfloat16*>(dq.t.data);
        p.k_cache = static_cast<const __nv_bfloat16*>(dkc.t.data);
        p.v_cache = static_cast<const __nv_bfloat16*>(dvc.t.data);
        p.out = static_cast<__nv_bfloat16*>(dout.t.data);
        p.block_tables = static_cast<const int32_t*>(tables->data());
        p.positions = static_cast<const int32_t*>(positions->data());
        p.partial = static_cast<float*>(partial.t.data);
        p.num_seqs = static_cast<int32_t>(n);
        p.num_splits = splits;
        p.max_blocks_per_seq = b.meta.max_blocks_per_seq;
        p.num_heads = c.num_heads;
        p.num_kv_heads = c.num_kv_heads;
        p.head_dim = c.head_dim;
        p.block_size = c.block_size;
        p.sliding_window = c.window;
        p.scale = params.scale;
        p.kernel = kind;
        p.programmatic = path.programmatic;
        p.min_split_keys = path.min_split_keys;
        p.split_counters = counters ? static_cast<int32_t*>(counters->data()) : nullptr;
        ASSERT_EQ(kernels::LaunchPagedDecodeAttention(p, cuda_->stream()), cudaSuccess) << what;
        ASSERT_TRUE(gpu_->Synchronize().ok()) << what;
        const double err = RelError(Download(*gpu_, dout.t), ref);
        worst_ = std::max(worst_, err);
        ++checks_;
        EXPECT_LE(err, kBf16Tolerance) << what;
        if (counters) {
          std::vector<int32_t> left(num_counters, -1);
          ASSERT_TRUE(gpu_->CopyToHost(Tensor(counters->data(), DType::kI32, {static_cast<int64_t>(num_counters)}),
                                       left.data())
                          .ok());
          EXPECT_EQ(std::count(left.begin(), left.end(), 0), static_cast<std::ptrdiff_t>(num_counters))
              << what << ": split counters not re-armed";
        }
      }
    }
  }

  std::unique_ptr<Backend> gpu_;
  CudaBackend* cuda_ = nullptr;
  std::unique_ptr<CpuBackend> cpu_;
  double worst_ = 0.0;
  int checks_ = 0;
  std::mt19937 rng_{4321};
};

TEST_F(DecodeAttentionParityTest, EveryKernelAndSplitCountMatchesTheReference) {
  for (const DecodeCase& c : Cases()) {
    Check(c);
    if (HasFatalFailure()) return;
  }
}

// Small enough for compute-sanitizer memcheck and racecheck: both tile paths (whole 16-key tiles
// and blocks of 5), a window, several splits.
TEST_F(DecodeAttentionParityTest, SmallBatchForSanitizers) {
  Check(Decodes(128, 8, 2, 16, 0, {1, 40, 200}), {1, 3});
  Check(Decodes(64, 4, 1, 5, 30, {7, 90}), {1, 2});
}

// The small-batch path launched directly: 1-4 sequences, head dims 64 / 128 / 256, groups 1 / 4 / 8,
// block sizes with whole tiles and without, a window, split counts 1 to 64 and the policy's; every
// kernel with programmatic launch alone, the in-kernel combine alone, and both; splits of at least
// 64, 128 and 256 keys.
TEST_F(DecodeAttentionParityTest, SmallBatchProgrammaticAndInKernelCombineMatchTheReference) {
  const std::vector<int32_t> lens{1023, 1, 300, 4097};
  const std::vector<int32_t> splits{1, 2, 3, 8, 16, 64};
  const SmallBatchPath paths[] = {{true, false}, {false, true}, {true, true}, {true, true, 128}, {false, false, 256}};
  for (int32_t n = 1; n <= 4; ++n) {
    const std::vector<int32_t> batch(lens.begin(), lens.begin() + n);
    for (int32_t hd : {64, 128, 256}) {
      for (int32_t group : {1, 4, 8}) {
        for (const SmallBatchPath& path : paths) {
          Check(Decodes(hd, 8 * group, 8, 16, 0, batch), splits, path);
          if (HasFatalFailure()) return;
        }
      }
    }
    for (const SmallBatchPath& path : paths) {
      Check(Decodes(128, 8, 2, 5, 0, batch), splits, path);         // blocks that split tiles
      Check(Decodes(64, 16, 2, 32, 200, batch), splits, path);      // a window
      if (HasFatalFailure()) return;
    }
  }
}

// Small enough for compute-sanitizer (memcheck, racecheck, synccheck): the small-batch path with
// a few splits.
TEST_F(DecodeAttentionParityTest, SmallBatchPathForSanitizers) {
  Check(Decodes(128, 8, 2, 16, 0, {1, 40, 200}), {2, 3}, {true, true});
  Check(Decodes(64, 4, 1, 5, 30, {7, 90}), {2}, {true, true});
  Check(Decodes(256, 4, 2, 16, 0, {300}), {3}, {true, true});
}

// As the engine runs a small decode batch through the backend: the small-M GEMV writes qkv, RoPE
// writes q and the new keys into the cache, attention reads them — all three programmatic, so the
// attention kernel may start while the GEMV still streams its weights (a wide one, so the overlap is
// real). The new tokens' K/V slots and q start as NaN: loading either before the wait shows.
// Compared with the CPU backend's RoPE + attention on the qkv the GPU computed.
TEST_F(DecodeAttentionParityTest, SmallBatchPathAfterProgrammaticGemvAndRope) {
  std::unique_ptr<Backend> gpu = gpu_testing::MakeGpuBackend(gpu_testing::GpuBackendOptions(0.9, true));
  ASSERT_NE(gpu, nullptr);
  constexpr int64_t kHidden = 4096;
  struct Shape {
    int32_t hd, nh, nkv;
  };
  const Shape shapes[] = {{128, 32, 8}, {64, 8, 2}, {128, 8, 8}, {128, 64, 8}};
  int64_t max_rows = 0;
  for (const Shape& s : shapes) max_rows = std::max<int64_t>(max_rows, (s.nh + 2 * s.nkv) * s.hd);
  // One weight for every shape (a prefix of its rows), small values so q·k stays moderate.
  auto w = RandomBf16(static_cast<size_t>(max_rows * kHidden), rng_, 0.03f);
  auto dw = Upload(*gpu, w, DType::kBF16, {max_rows, kHidden});
  const int64_t max_pos = 8192;
  const std::vector<int32_t> lens{1500, 37, 800, 3000};
  for (const Shape& s : shapes) {
    const int64_t hd = s.hd, nh = s.nh, nkv = s.nkv, half = hd / 2, row = (nh + 2 * nkv) * hd;
    gpu_testing::HostRope rope = gpu_testing::LlamaRope(max_pos, s.hd);
    std::vector<float>& cos = rope.cos;
    std::vector<float>& sin = rope.sin;
    auto dcos = Upload(*gpu, cos, DType::kF32, {max_pos, half});
    auto dsin = Upload(*gpu, sin, DType::kF32, {max_pos, half});
    const Tensor w_view(dw.t.data, DType::kBF16, {row, kHidden});
    for (int32_t n = 1; n <= 4; ++n) {
      const DecodeCase c = Decodes(s.hd, s.nh, s.nkv, 16, 0, std::vector<int32_t>(lens.begin(), lens.begin() + n));
      const std::string what = Describe(c);
      const gpu_testing::AttentionBatch b = gpu_testing::MakeAttentionBatch(c, 4, rng_);
      const int64_t cache_elems = static_cast<int64_t>(b.num_blocks) * nkv * c.block_size * hd;
      auto x = RandomBf16(n * kHidden, rng_);
      auto kc = RandomBf16(cache_elems, rng_, 2.0f), vc = RandomBf16(cache_elems, rng_);
      // The GPU cache: the new tokens' slots poisoned (RoPE overwrites them).
      std::vector<float> kc_gpu = kc, vc_gpu = vc;
      for (int64_t slot : b.slots) {
        const int64_t blk = slot / c.block_size, off = slot % c.block_size;
        for (int64_t h = 0; h < nkv; ++h) {
          for (int64_t d = 0; d < hd; ++d) {
            const int64_t i = ((blk * nkv + h) * c.block_size + off) * hd + d;
            kc_gpu[i] = vc_gpu[i] = std::nanf("");
          }
        }
      }
      const AttentionParams params{s.nh, s.nkv, s.hd, 1.0f / std::sqrt(static_cast<float>(hd)), 0};
      auto dx = Upload(*gpu, x, DType::kBF16, {n, kHidden});
      auto dqkv = Poisoned(*gpu, DType::kBF16, {n, row});
      auto dq = Poisoned(*gpu, DType::kBF16, {n, nh * hd});
      auto dkc = Upload(*gpu, kc_gpu, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
      auto dvc = Upload(*gpu, vc_gpu, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
      const RopeTables gpu_rope{dcos.t, dsin.t, s.hd};
      // Twice: the first run uploads the attention metadata (a copy between the GEMV and RoPE);
      // the second reuses it, so GEMV -> RoPE -> attention are back to back. Inputs re-poisoned.
      for (int run = 0; run < 2; ++run) {
        auto dout = Poisoned(*gpu, DType::kBF16, {n, nh * hd});
        if (run == 1) {
          dkc = Upload(*gpu, kc_gpu, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
          dvc = Upload(*gpu, vc_gpu, DType::kBF16, {b.num_blocks, nkv, c.block_size, hd});
          dq = Poisoned(*gpu, DType::kBF16, {n, nh * hd});
          dqkv = Poisoned(*gpu, DType::kBF16, {n, row});
        }
        ASSERT_TRUE(gpu->Linear(dx.t, w_view, Tensor(), dqkv.t).ok()) << what;
        ASSERT_TRUE(gpu->RopeAndWriteKv(dqkv.t, dq.t, gpu_rope, params, b.meta, {dkc.t, dvc.t}).ok()) << what;
        ASSERT_TRUE(gpu->Attention(dq.t, {dkc.t, dvc.t}, params, b.meta, dout.t).ok()) << what;
        ASSERT_TRUE(gpu->Synchronize().ok()) << what;
        // The reference from the qkv the GPU computed.
        auto qkv = Download(*gpu, dqkv.t);
        std::vector<float> rq(n * nh * hd), ref(n * nh * hd), kc_cpu = kc, vc_cpu = vc;
        const RopeTables cpu_rope{HostF32(cos, {max_pos, half}), HostF32(sin, {max_pos, half}), s.hd};
        const KvLayerView cpu_cache{HostF32(kc_cpu, {b.num_blocks, nkv, c.block_size, hd}),
                                    HostF32(vc_cpu, {b.num_blocks, nkv, c.block_size, hd})};
        ASSERT_TRUE(
            cpu_->RopeAndWriteKv(HostF32(qkv, {n, row}), HostF32(rq, {n, nh * hd}), cpu_rope, params, b.meta, cpu_cache)
                .ok());
        ASSERT_TRUE(cpu_->Attention(HostF32(rq, {n, nh * hd}), cpu_cache, params, b.meta, HostF32(ref, {n, nh * hd})).ok());
        const double err = RelError(Download(*gpu, dout.t), ref);
        worst_ = std::max(worst_, err);
        ++checks_;
        EXPECT_LE(err, kBf16Tolerance) << what << " run " << run;
      }
    }
  }
}

// Launches the kernels cannot do are refused before anything runs: the tensor-core kernel at head
// dim 256, splits that are not whole 16-key tiles, more splits than the combine holds (64).
TEST_F(DecodeAttentionParityTest, TensorCoreKernelRejectsHeadDim256) {
  kernels::PagedDecodeAttentionParams p;
  p.num_seqs = 1;
  p.num_heads = 8;
  p.num_kv_heads = 2;
  p.head_dim = 256;
  p.block_size = 16;
  p.kernel = PagedDecodeKernel::kTensorCore;
  EXPECT_EQ(kernels::LaunchPagedDecodeAttention(p, cuda_->stream()), cudaErrorInvalidValue);
  // Splits of a number of keys that is not whole 16-key tiles.
  p.head_dim = 128;
  p.min_split_keys = 24;
  EXPECT_EQ(kernels::LaunchPagedDecodeAttention(p, cuda_->stream()), cudaErrorInvalidValue);
  p.min_split_keys = kernels::kPagedDecodeMinSplitKeys;
  p.num_splits = 65;
  p.partial = reinterpret_cast<float*>(16);  // never written: refused first
  for (PagedDecodeKernel kind : {PagedDecodeKernel::kTensorCore, PagedDecodeKernel::kCudaCore}) {
    p.kernel = kind;
    EXPECT_EQ(kernels::LaunchPagedDecodeAttention(p, cuda_->stream()), cudaErrorInvalidValue);
  }
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

// The tensor-core policy fills every SM's CTA slots to >= 90% in each wave, within its caps.
TEST(DecodeAttentionSplitPolicy, FillsTheWavesWithinTheCaps) {
  EXPECT_TRUE(kernels::PagedDecodeAttentionTensorCores(64));
  EXPECT_TRUE(kernels::PagedDecodeAttentionTensorCores(128));
  EXPECT_FALSE(kernels::PagedDecodeAttentionTensorCores(256));
  for (int32_t sms : {1, 78, 114, 132}) {
    for (int32_t seqs : {1, 2, 7, 32, 64, 100, 128, 256, 1000}) {
      for (int32_t nkv : {1, 8}) {
        for (int32_t ctx : {1, 100, 1024, 32768}) {
          const int32_t s = kernels::PagedDecodeAttentionSplits(seqs, nkv, ctx, sms);
          const std::string what = std::to_string(seqs) + " seqs, " + std::to_string(nkv) + " kv heads, ctx " +
                                   std::to_string(ctx) + ", " + std::to_string(sms) + " SMs";
          ASSERT_GE(s, 1) << what;
          ASSERT_LE(s, 64) << what;
          ASSERT_LE(s, std::max(1, (ctx + 63) / 64)) << what;
          const int64_t ctas = static_cast<int64_t>(seqs) * nkv * s, slots = 2LL * sms;
          const int64_t waves = (ctas + slots - 1) / slots;
          const bool capped = s == std::min(64, std::max(1, (ctx + 63) / 64));
          if (!capped) {
            EXPECT_GE(10 * ctas, 9 * waves * slots) << what;
          }
          // The CUDA-core kernel keeps its own policy: enough CTAs to fill the SMs twice, at most 64
          // splits (what the combine holds).
          const int64_t want = (2LL * sms + int64_t{seqs} * nkv - 1) / (int64_t{seqs} * nkv);
          EXPECT_EQ(kernels::PagedDecodeAttentionSplits(seqs, nkv, ctx, sms, PagedDecodeKernel::kCudaCore),
                    std::max<int64_t>(1, std::min<int64_t>({want, std::max(1, (ctx + 63) / 64), 64})))
              << what;
        }
      }
    }
  }
}

}  // namespace
}  // namespace tandem
