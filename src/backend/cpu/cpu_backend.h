// CpuBackend: the reference implementation of Backend. float32 activations and KV cache, float32
// arithmetic on bf16/fp16/fp32 weights (read in place from the memory-mapped checkpoint), threaded
// over the cores with a ThreadPool.
#pragma once

#include <memory>

#include "backend/backend.h"
#include "common/thread_pool.h"

namespace tandem {

struct CpuBackendConfig {
  int num_threads = 0;  // 0: all hardware threads
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(CpuBackendConfig config = {});

  std::string_view name() const override { return "cpu"; }
  DType activation_dtype() const override { return DType::kF32; }
  DType kv_cache_dtype() const override { return DType::kF32; }

  StatusOr<std::unique_ptr<DeviceBuffer>> Allocate(size_t bytes) override;
  StatusOr<Tensor> UploadWeight(const HostTensor& host,
                                std::unique_ptr<DeviceBuffer>* storage) override;
  Status CopyToDevice(const void* src, Tensor dst) override;
  Status CopyToHost(const Tensor& src, void* dst) override;
  Status Copy(const Tensor& src, Tensor dst) override;
  Status Synchronize() override { return OkStatus(); }

  Status Embedding(std::span<const int32_t> ids, const Tensor& table, Tensor out) override;
  Status RmsNorm(const Tensor& x, Tensor residual, const Tensor& weight, float eps,
                 Tensor out) override;
  Status Linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor out) override;
  Status SiluMul(const Tensor& gate_up, Tensor out) override;
  Status RopeAndWriteKv(const Tensor& qkv, Tensor q_out, const RopeTables& rope,
                        const AttentionParams& params, const AttentionMetadata& meta,
                        KvLayerView cache) override;
  Status Attention(const Tensor& q, KvLayerView cache, const AttentionParams& params,
                   const AttentionMetadata& meta, Tensor out) override;
  Status GatherRows(const Tensor& x, std::span<const int32_t> rows, Tensor out) override;
  Status GatherKvBlocks(std::span<const KvLayerView> layers, std::span<const int32_t> block_ids,
                        void* host) override;
  Status ScatterKvBlocks(const void* host, std::span<const int32_t> block_ids,
                         std::span<const KvLayerView> layers) override;

  ThreadPool& pool() { return *pool_; }

 private:
  std::unique_ptr<ThreadPool> pool_;
};

}  // namespace tandem
