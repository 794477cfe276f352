#include "backend/cuda/decode_graphs.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include <spdlog/spdlog.h>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_attention_metadata.h"
#include "tandem/check.h"

namespace tandem {
namespace {

size_t AlignUp(size_t n) { return (n + 15) / 16 * 16; }

// Offsets of the staged arrays for `batch` sequences and `blocks` blocks per table.
struct Layout {
  size_t ids, positions, slots, tables, total;
  Layout(int32_t batch, int32_t blocks) {
    const size_t b = static_cast<size_t>(batch);
    ids = 0;
    positions = AlignUp(ids + b * sizeof(int32_t));
    slots = AlignUp(positions + b * sizeof(int32_t));
    tables = AlignUp(slots + b * sizeof(int64_t));
    total = AlignUp(tables + b * static_cast<size_t>(blocks) * sizeof(int32_t));
  }
};

}  // namespace

DecodeGraphs::~DecodeGraphs() {
  // The owner synchronized its stream; errors on teardown have nowhere to go.
  Clear();
  if (copied_ != nullptr) (void)cudaEventDestroy(copied_);
  if (host_ != nullptr) (void)cudaFreeHost(host_);
  if (device_ != nullptr) (void)cudaFree(device_);
  if (partial_ != nullptr) (void)cudaFree(partial_);
  if (work_items_ != nullptr) (void)cudaFree(work_items_);
}

Status DecodeGraphs::Reserve(cudaStream_t stream, int32_t max_batch, int32_t max_blocks_per_seq,
                             size_t partial_floats) {
  TANDEM_CHECK(!reserved()) << "decode graphs reserved twice";
  TANDEM_CHECK(max_batch >= 1 && max_blocks_per_seq >= 1);
  const Layout layout(max_batch, max_blocks_per_seq);
  TANDEM_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming));
  TANDEM_CUDA_RETURN_IF_ERROR(cudaMallocHost(reinterpret_cast<void**>(&host_), layout.total));
  TANDEM_CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(&device_), layout.total));
  if (partial_floats > 0) {
    TANDEM_CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(&partial_), partial_floats * sizeof(float)));
  }
  partial_floats_ = partial_floats;
  std::vector<int32_t> items(3 * static_cast<size_t>(max_batch));
  for (int32_t i = 0; i < max_batch; ++i) {
    items[3 * i] = i;
    items[3 * i + 1] = i;
    items[3 * i + 2] = 1;
  }
  TANDEM_CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(&work_items_), items.size() * sizeof(int32_t)));
  TANDEM_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(work_items_, items.data(), items.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  bytes_ = layout.total;
  max_batch_ = max_batch;
  max_blocks_per_seq_ = max_blocks_per_seq;
  stream_ = stream;
  return OkStatus();
}

Status DecodeGraphs::Stage(std::span<const int32_t> token_ids, const AttentionMetadata& meta,
                           int64_t num_kv_blocks) {
  TANDEM_CHECK(reserved()) << "StageDecodeInputs before ReserveDecodeGraphs";
  TANDEM_CHECK(!active_) << "StageDecodeInputs inside a decode step";
  const int32_t n = meta.num_seqs;
  const int32_t width = meta.max_blocks_per_seq;
  if (n < 1 || n > max_batch_ || meta.num_tokens != n || token_ids.size() != static_cast<size_t>(n) ||
      width < 1 || width > max_blocks_per_seq_) {
    return InvalidArgumentError("decode graphs: a batch of " + std::to_string(n) + " sequences / " +
                                std::to_string(meta.num_tokens) + " tokens with tables of " +
                                std::to_string(meta.max_blocks_per_seq) + " blocks does not fit the reserved " +
                                std::to_string(max_batch_) + " x " + std::to_string(max_blocks_per_seq_));
  }
  for (int32_t i = 0; i <= n; ++i) {
    if (meta.query_start[i] != i) return InvalidArgumentError("decode graphs: not one token per sequence");
  }
  TANDEM_RETURN_IF_ERROR(ValidateAttentionMetadata(meta, num_kv_blocks));
  // The previous step's copy must have left the staging memory before it is rewritten.
  if (copy_pending_) TANDEM_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(copied_));
  copy_pending_ = false;
  const Layout layout(n, width);
  std::memcpy(host_ + layout.ids, token_ids.data(), token_ids.size_bytes());
  std::memcpy(host_ + layout.positions, meta.positions.data(), static_cast<size_t>(n) * sizeof(int32_t));
  std::memcpy(host_ + layout.slots, meta.slot_mapping.data(), static_cast<size_t>(n) * sizeof(int64_t));
  std::memcpy(host_ + layout.tables, meta.block_tables.data(),
              static_cast<size_t>(n) * static_cast<size_t>(width) * sizeof(int32_t));
  TANDEM_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(device_, host_, layout.total, cudaMemcpyHostToDevice, stream_));
  TANDEM_CUDA_RETURN_IF_ERROR(cudaEventRecord(copied_, stream_));
  copy_pending_ = true;
  // The layout depends on (n, width): a graph recorded for them reads exactly these addresses.
  staged_.token_ids = reinterpret_cast<const int32_t*>(device_ + layout.ids);
  staged_.positions = reinterpret_cast<const int32_t*>(device_ + layout.positions);
  staged_.slot_mapping = reinterpret_cast<const int64_t*>(device_ + layout.slots);
  staged_.block_tables = reinterpret_cast<const int32_t*>(device_ + layout.tables);
  staged_.num_seqs = n;
  staged_.max_blocks_per_seq = width;
  staged_.max_position = *std::max_element(meta.positions.begin(), meta.positions.begin() + n);
  return OkStatus();
}

Status DecodeGraphs::Run(int32_t key, bool capture, const std::function<Status()>& record) {
  TANDEM_CHECK(staged_.num_seqs > 0) << "RunDecodeGraph without staged inputs";
  if (capture) {
    auto it = graphs_.find(key);
    if (it != graphs_.end()) {
      TANDEM_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(it->second, stream_));
      return OkStatus();
    }
  }
  active_ = true;
  Status eager = record();
  active_ = false;
  TANDEM_RETURN_IF_ERROR(eager);
  if (capture && failed_.count(key) == 0) return Capture(key, record);
  return OkStatus();
}

namespace {

// The number of `graph`'s edges of type programmatic (a PDL launch the capture kept).
cudaError_t CountProgrammaticEdges(cudaGraph_t graph, size_t* count) {
  size_t num_edges = 0;
  cudaError_t err = cudaGraphGetEdges(graph, nullptr, nullptr, nullptr, &num_edges);
  if (err != cudaSuccess) return err;
  std::vector<cudaGraphNode_t> from(num_edges), to(num_edges);
  std::vector<cudaGraphEdgeData> data(num_edges);
  err = cudaGraphGetEdges(graph, from.data(), to.data(), data.data(), &num_edges);
  if (err != cudaSuccess) return err;
  *count = 0;
  for (size_t i = 0; i < num_edges; ++i) *count += data[i].type == cudaGraphDependencyTypeProgrammatic ? 1 : 0;
  return cudaSuccess;
}

}  // namespace

Status DecodeGraphs::Capture(int32_t key, const std::function<Status()>& record) {
  const auto start = std::chrono::steady_clock::now();
  // Thread-local mode: only this thread's unsafe calls (a sync, an allocation) break the capture.
  TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  active_ = true;
  const Status recorded = record();
  active_ = false;
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
  cudaGraphExec_t exec = nullptr;
  cudaError_t inst = cudaErrorUnknown;
  size_t programmatic = 0;
  if (recorded.ok() && end == cudaSuccess) {
    inst = CountProgrammaticEdges(graph, &programmatic);
    if (inst == cudaSuccess) inst = cudaGraphInstantiate(&exec, graph, 0);
  }
  if (graph != nullptr) (void)cudaGraphDestroy(graph);
  if (!recorded.ok() || end != cudaSuccess || inst != cudaSuccess) {
    (void)cudaGetLastError();  // capture errors are not sticky: clear them
    failed_.insert(key);
    spdlog::warn("cuda backend: capturing the decode graph for {} sequences x {} table blocks failed ({}); "
                 "it runs eagerly", staged_.num_seqs, staged_.max_blocks_per_seq,
                 !recorded.ok() ? recorded.ToString() : cudaGetErrorString(end != cudaSuccess ? end : inst));
    return OkStatus();
  }
  graphs_[key] = exec;
  last_programmatic_edges_ = programmatic;
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("cuda backend: captured the decode graph for {} sequences x {} table blocks ({:.1f} ms, "
               "{} programmatic edges)", staged_.num_seqs, staged_.max_blocks_per_seq, ms, programmatic);
  return OkStatus();
}

void DecodeGraphs::Clear() {
  for (auto& [key, exec] : graphs_) (void)cudaGraphExecDestroy(exec);
  graphs_.clear();
  failed_.clear();
}

}  // namespace tandem
