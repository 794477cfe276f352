// Safetensors files and checkpoints, memory-mapped.
//
// Format: an 8-byte little-endian header length N, N bytes of JSON mapping tensor names to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the end of the header),
// an optional "__metadata__" string map, then the data. Every header field is validated against
// the file size; no tensor view ever points outside the mapping.
#pragma once

#include <cstddef>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "model/weight_source.h"

namespace tandem {

struct SafetensorsTensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
};

// One .safetensors file. Owns the mapping; views from View() keep it alive. Immutable after Open(),
// so it is safe to share between threads.
class SafetensorsFile : public std::enable_shared_from_this<SafetensorsFile> {
 public:
  // Errors (naming the file): NotFound, unreadable, truncated, header length past the end, malformed
  // JSON, unknown dtype, shape/offset mismatch, offsets past the end or overlapping.
  static StatusOr<std::shared_ptr<SafetensorsFile>> Open(const std::filesystem::path& path);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // In data-offset order.
  const std::vector<SafetensorsTensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsTensorInfo* Find(std::string_view name) const;

  // A zero-copy view of tensor `info` that keeps this file mapped.
  HostTensor View(const SafetensorsTensorInfo& info) const;

 private:
  SafetensorsFile() = default;

  std::filesystem::path path_;
  const std::byte* map_ = nullptr;
  size_t map_size_ = 0;
  const std::byte* data_ = nullptr;  // start of the data section
  std::vector<SafetensorsTensorInfo> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A model directory's weights: `model.safetensors`, or the shards named by
// `model.safetensors.index.json` (every shard listed must exist and hold the tensors the index
// says it holds). `dir` may also name a single .safetensors file. Immutable after Open(); Get() is
// thread-safe and zero-copy (views keep their shard mapped even after the checkpoint is destroyed).
class SafetensorsCheckpoint final : public WeightSource {
 public:
  static StatusOr<std::unique_ptr<SafetensorsCheckpoint>> Open(const std::filesystem::path& dir);

  StatusOr<HostTensor> Get(std::string_view name) const override;
  bool Contains(std::string_view name) const override;
  std::vector<std::string> TensorNames() const override;
  std::string Describe() const override;

  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  SafetensorsCheckpoint() = default;

  std::filesystem::path dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::unordered_map<std::string, std::pair<size_t, size_t>> index_;  // name -> (file, tensor)
};

}  // namespace tandem
