#include "backend/cpu/cpu_backend.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#include "backend/cpu/cpu_attention.h"
#include "backend/cpu/cpu_linear.h"
#include "common/half.h"

namespace tandem {
namespace {

class HostBuffer final : public DeviceBuffer {
 public:
  HostBuffer(void* data, size_t size) : data_(data), size_(size) {}
  ~HostBuffer() override { std::free(data_); }
  void* data() const override { return data_; }
  size_t size() const override { return size_; }

 private:
  void* data_;
  size_t size_;
};

float LoadScalar(const Tensor& t, int64_t i) {
  switch (t.dtype) {
    case DType::kF32: return t.as<const float>()[i];
    case DType::kBF16: return Bf16ToF32(t.as<const uint16_t>()[i]);
    case DType::kF16: return F16ToF32(t.as<const uint16_t>()[i]);
    default: TANDEM_CHECK(false) << "unsupported dtype " << DTypeName(t.dtype);
  }
  return 0.0f;
}

}  // namespace

CpuBackend::CpuBackend(CpuBackendConfig config)
    : pool_(std::make_unique<ThreadPool>(config.num_threads > 0 ? config.num_threads
                                                                : ThreadPool::DefaultThreads())) {}

StatusOr<std::unique_ptr<DeviceBuffer>> CpuBackend::Allocate(size_t bytes) {
  const size_t aligned = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, aligned);
  if (p == nullptr) {
    return ResourceExhaustedError("cpu backend: cannot allocate " + std::to_string(bytes) + " bytes");
  }
  return std::unique_ptr<DeviceBuffer>(std::make_unique<HostBuffer>(p, bytes));
}

StatusOr<Tensor> CpuBackend::UploadWeight(const HostTensor& host,
                                          std::unique_ptr<DeviceBuffer>* storage) {
  if (host.dtype != DType::kF32 && host.dtype != DType::kBF16 && host.dtype != DType::kF16) {
    return InvalidArgumentError(host.source + ": tensor " + host.name + " has dtype " +
                                std::string(DTypeName(host.dtype)) +
                                "; the CPU backend takes F32, BF16 or F16 weights");
  }
  if (host.shape.empty() || host.shape.size() > Tensor::kMaxDims) {
    return InvalidArgumentError(host.source + ": tensor " + host.name + " has rank " +
                                std::to_string(host.shape.size()));
  }
  // Zero copy: kernels read the mapped checkpoint bytes directly.
  Tensor t;
  t.data = const_cast<std::byte*>(host.data);
  t.dtype = host.dtype;
  t.ndim = static_cast<int>(host.shape.size());
  for (int i = 0; i < t.ndim; ++i) t.shape[i] = host.shape[i];
  storage->reset();
  return t;
}

Status CpuBackend::CopyToDevice(const void* src, Tensor dst) {
  std::memcpy(dst.data, src, dst.nbytes());
  return OkStatus();
}

Status CpuBackend::CopyToHost(const Tensor& src, void* dst) {
  std::memcpy(dst, src.data, src.nbytes());
  return OkStatus();
}

Status CpuBackend::Copy(const Tensor& src, Tensor dst) {
  TANDEM_CHECK_LE(src.nbytes(), dst.nbytes());
  std::memcpy(dst.data, src.data, src.nbytes());
  return OkStatus();
}

Status CpuBackend::Embedding(std::span<const int32_t> ids, const Tensor& table, Tensor out) {
  const int64_t hidden = table.dim(1);
  TANDEM_CHECK_EQ(out.dim(1), hidden);
  float* o = out.as<float>();
  for (size_t t = 0; t < ids.size(); ++t) {
    const int64_t row = ids[t];
    TANDEM_CHECK(row >= 0 && row < table.dim(0)) << "token id " << row;
    for (int64_t h = 0; h < hidden; ++h) o[t * hidden + h] = LoadScalar(table, row * hidden + h);
  }
  return OkStatus();
}

Status CpuBackend::RmsNorm(const Tensor& x, Tensor residual, const Tensor& weight, float eps,
                           Tensor out) {
  const int64_t rows = x.dim(0);
  const int64_t hidden = x.dim(-1);
  std::vector<float> w(hidden);
  for (int64_t h = 0; h < hidden; ++h) w[h] = LoadScalar(weight, h);
  pool_->ParallelFor(rows, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = x.as<const float>() + r * hidden;
      const float* src = xr;
      if (!residual.empty()) {
        float* res = residual.as<float>() + r * hidden;
        for (int64_t h = 0; h < hidden; ++h) res[h] += xr[h];
        src = res;
      }
      double sum_sq = 0.0;
      for (int64_t h = 0; h < hidden; ++h) sum_sq += static_cast<double>(src[h]) * src[h];
      const float variance = static_cast<float>(sum_sq / static_cast<double>(hidden));
      const float inv = 1.0f / std::sqrt(variance + eps);
      float* o = out.as<float>() + r * hidden;
      for (int64_t h = 0; h < hidden; ++h) o[h] = w[h] * (src[h] * inv);
    }
  });
  return OkStatus();
}

Status CpuBackend::Linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor out) {
  cpu::Linear(x, weight, bias, out, *pool_);
  return OkStatus();
}

Status CpuBackend::SiluMul(const Tensor& gate_up, Tensor out) {
  const int64_t rows = out.numel() == 0 ? 0 : gate_up.dim(0);
  const int64_t inter = rows == 0 ? 0 : out.numel() / rows;
  TANDEM_CHECK_EQ(gate_up.numel(), 2 * rows * inter);
  const float* gu = gate_up.as<const float>();
  float* o = out.as<float>();
  pool_->ParallelFor(rows * inter, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = i / inter, c = i % inter;
      const float g = gu[r * 2 * inter + c];
      const float silu = g / (1.0f + std::exp(-g));
      o[i] = silu * gu[r * 2 * inter + inter + c];
    }
  });
  return OkStatus();
}

Status CpuBackend::RopeAndWriteKv(const Tensor& qkv, Tensor q_out, const RopeTables& rope,
                                  const AttentionParams& params, const AttentionMetadata& meta,
                                  KvLayerView cache) {
  cpu::RopeAndWriteKv(qkv, q_out, rope, params, meta, cache, *pool_);
  return OkStatus();
}

Status CpuBackend::Attention(const Tensor& q, KvLayerView cache, const AttentionParams& params,
                             const AttentionMetadata& meta, Tensor out) {
  cpu::PagedAttention(q, cache, params, meta, out, *pool_);
  return OkStatus();
}

Status CpuBackend::GatherRows(const Tensor& x, std::span<const int32_t> rows, Tensor out) {
  const size_t row_bytes = x.nbytes() / static_cast<size_t>(x.dim(0));
  for (size_t r = 0; r < rows.size(); ++r) {
    std::memcpy(static_cast<std::byte*>(out.data) + r * row_bytes,
                static_cast<const std::byte*>(x.data) + static_cast<size_t>(rows[r]) * row_bytes,
                row_bytes);
  }
  return OkStatus();
}

namespace {

// Checks that every id names a block of every layer and that the layers share one geometry.
Status CheckKvBlocks(std::span<const KvLayerView> layers, std::span<const int32_t> block_ids) {
  if (layers.empty()) return InvalidArgumentError("KV block copy: no layers");
  const size_t block_bytes = KvBlockBytes(layers[0]);
  for (const KvLayerView& layer : layers) {
    if (KvBlockBytes(layer) != block_bytes || layer.v.nbytes() != layer.k.nbytes()) {
      return InvalidArgumentError("KV block copy: layers differ in geometry");
    }
    for (int32_t id : block_ids) {
      if (id < 0 || id >= layer.k.dim(0)) {
        return OutOfRangeError("KV block copy: block id " + std::to_string(id) + " outside [0, " +
                               std::to_string(layer.k.dim(0)) + ")");
      }
    }
  }
  return OkStatus();
}

}  // namespace

Status CpuBackend::GatherKvBlocks(std::span<const KvLayerView> layers,
                                  std::span<const int32_t> block_ids, void* host) {
  TANDEM_RETURN_IF_ERROR(CheckKvBlocks(layers, block_ids));
  const size_t bb = KvBlockBytes(layers[0]);
  auto* out = static_cast<std::byte*>(host);
  for (const KvLayerView& layer : layers) {
    for (const Tensor* t : {&layer.k, &layer.v}) {
      const auto* base = static_cast<const std::byte*>(t->data);
      for (int32_t id : block_ids) {
        std::memcpy(out, base + static_cast<size_t>(id) * bb, bb);
        out += bb;
      }
    }
  }
  return OkStatus();
}

Status CpuBackend::ScatterKvBlocks(const void* host, std::span<const int32_t> block_ids,
                                   std::span<const KvLayerView> layers) {
  TANDEM_RETURN_IF_ERROR(CheckKvBlocks(layers, block_ids));
  const size_t bb = KvBlockBytes(layers[0]);
  const auto* in = static_cast<const std::byte*>(host);
  for (const KvLayerView& layer : layers) {
    for (const Tensor* t : {&layer.k, &layer.v}) {
      auto* base = static_cast<std::byte*>(t->data);
      for (int32_t id : block_ids) {
        std::memcpy(base + static_cast<size_t>(id) * bb, in, bb);
        in += bb;
      }
    }
  }
  return OkStatus();
}

}  // namespace tandem
