// CudaBackend's KV block transfer ops (declared in cuda_backend.h): the disaggregation and swap
// paths move whole blocks between the paged cache and a contiguous buffer with
// kernels/kv_block_copy.cuh.
#include <algorithm>
#include <string>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"
#include "kernels/kv_block_copy.cuh"

namespace tandem {
namespace {

kernels::KvBlockCopyParams CopyParams(const KvLayerView& layer, const int32_t* ids, int32_t num_ids,
                                      void* buffer) {
  kernels::KvBlockCopyParams p;
  p.k_cache = layer.k.data;
  p.v_cache = layer.v.data;
  p.buffer = buffer;
  p.block_ids = ids;
  p.num_ids = num_ids;
  p.block_bytes = static_cast<int64_t>(KvBlockBytes(layer));
  return p;
}

// Block ids are validated against the cache here: a wrong id would read or write another request's KV.
void CheckBlockIds(std::span<const KvLayerView> layers, std::span<const int32_t> block_ids) {
  TANDEM_CHECK(!layers.empty());
  const int64_t num_blocks = layers[0].k.dim(0);
  for (int32_t id : block_ids) TANDEM_CHECK(id >= 0 && id < num_blocks) << "KV block id " << id;
}

}  // namespace

Status CudaBackend::GatherKvLayerOnDevice(const KvLayerView& layer, const int32_t* device_block_ids,
                                          int32_t num_ids, void* device_dst) {
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  TANDEM_CUDA_RETURN_IF_ERROR(
      kernels::LaunchGatherKvBlocks(CopyParams(layer, device_block_ids, num_ids, device_dst), stream_));
  return OkStatus();
}

Status CudaBackend::GatherKvBlocks(std::span<const KvLayerView> layers, std::span<const int32_t> block_ids,
                                   void* host) {
  if (block_ids.empty() || layers.empty()) return OkStatus();
  CheckBlockIds(layers, block_ids);
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  const size_t total = KvBlocksHostBytes(layers, block_ids.size());
  if (!kv_staging_ || kv_staging_->size() < total) {
    TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));  // the old staging may be in use
    kv_staging_.reset();
    TANDEM_ASSIGN_OR_RETURN(kv_staging_, Allocate(total));
  }
  TANDEM_RETURN_IF_ERROR(kv_ids_upload_.Upload(block_ids.data(), block_ids.size_bytes(), false));
  const auto* ids = static_cast<const int32_t*>(kv_ids_upload_.device());
  const size_t layer_bytes = total / layers.size();
  auto* staging = static_cast<std::byte*>(kv_staging_->data());
  for (size_t l = 0; l < layers.size(); ++l) {
    TANDEM_CUDA_RETURN_IF_ERROR(kernels::LaunchGatherKvBlocks(
        CopyParams(layers[l], ids, static_cast<int32_t>(block_ids.size()), staging + l * layer_bytes), stream_));
  }
  TANDEM_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host, staging, total, cudaMemcpyDeviceToHost, stream_));
  TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return OkStatus();
}

Status CudaBackend::ScatterKvBlocks(const void* host, std::span<const int32_t> block_ids,
                                    std::span<const KvLayerView> layers) {
  if (block_ids.empty() || layers.empty()) return OkStatus();
  CheckBlockIds(layers, block_ids);
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  const size_t total = KvBlocksHostBytes(layers, block_ids.size());
  if (!kv_staging_ || kv_staging_->size() < total) {
    TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    kv_staging_.reset();
    TANDEM_ASSIGN_OR_RETURN(kv_staging_, Allocate(total));
  }
  TANDEM_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(kv_staging_->data(), host, total, cudaMemcpyHostToDevice, stream_));
  return ScatterKvBlocksFromDevice(kv_staging_->data(), block_ids, layers);
}

Status CudaBackend::ScatterKvBlocksFromDevice(const void* device_src, std::span<const int32_t> block_ids,
                                              std::span<const KvLayerView> layers) {
  if (block_ids.empty() || layers.empty()) return OkStatus();
  CheckBlockIds(layers, block_ids);
  TANDEM_RETURN_IF_ERROR(SelectDevice());
  TANDEM_RETURN_IF_ERROR(kv_ids_upload_.Upload(block_ids.data(), block_ids.size_bytes(), false));
  const auto* ids = static_cast<const int32_t*>(kv_ids_upload_.device());
  const size_t layer_bytes = KvBlocksHostBytes(layers, block_ids.size()) / layers.size();
  const auto* src = static_cast<const std::byte*>(device_src);
  for (size_t l = 0; l < layers.size(); ++l) {
    TANDEM_CUDA_RETURN_IF_ERROR(kernels::LaunchScatterKvBlocks(
        CopyParams(layers[l], ids, static_cast<int32_t>(block_ids.size()),
                   const_cast<std::byte*>(src + l * layer_bytes)),
        stream_));
  }
  TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return OkStatus();
}

}  // namespace tandem
