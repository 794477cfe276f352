// GgufFile: a memory-mapped GGUF file (versions 2 and 3): metadata key/values and tensor infos.
//
// Layout (little-endian): magic "GGUF", u32 version, u64 tensor_count, u64 kv_count, kv_count
// key/values (string key, u32 value type, value), tensor_count tensor infos (string name, u32
// n_dims, n_dims x u64 ne (fastest-varying first), u32 ggml type, u64 offset), padding to
// `general.alignment` (default 32), then the data section. Every count, length and offset is
// validated against the file size while parsing: no view ever points outside the mapping, and a
// corrupt or truncated file is a Status error naming the file (and the key or tensor).
//
// Immutable after Open(); safe to read from many threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "model/gguf_type.h"
#include "tandem/status.h"

namespace tandem {

enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

std::string_view GgufValueTypeName(GgufValueType type);

// One metadata value. Scalars live in the field matching their type family; arrays hold their
// elements (all of `element_type`, possibly arrays themselves).
struct GgufValue {
  GgufValueType type = GgufValueType::kUint32;
  uint64_t uint_value = 0;  // kUint8/16/32/64 and kBool (0 or 1)
  int64_t int_value = 0;    // kInt8/16/32/64
  double float_value = 0;   // kFloat32/64
  std::string string_value;
  GgufValueType element_type = GgufValueType::kUint32;  // kArray only
  std::vector<GgufValue> elements;                      // kArray only

  bool is_integer() const;
  bool is_float() const;
};

struct GgufTensorInfo {
  std::string name;                // GGUF name, e.g. "blk.0.attn_q.weight"
  GgmlType type = GgmlType::kF32;
  std::vector<int64_t> ne;         // GGUF order: ne[0] is the fastest-varying (columns)
  uint64_t offset = 0;             // relative to the data section, a multiple of the alignment
  uint64_t nbytes = 0;

  int64_t numel() const;
  // Row-major shape, outermost first (ne reversed): the Hugging Face [out, in] order.
  std::vector<int64_t> shape() const;
};

class GgufFile {
 public:
  // NotFound when the file is missing; InvalidArgument/DataLoss (message names the file and the
  // key or tensor) for a bad magic, an unsupported version, truncation, absurd counts or lengths,
  // unknown value or tensor types, misaligned or out-of-range or overlapping tensor data.
  static StatusOr<std::shared_ptr<const GgufFile>> Open(const std::filesystem::path& path);

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // of the data section, in the file
  uint64_t file_size() const { return map_size_; }

  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  const GgufValue* FindValue(std::string_view key) const;

  // Typed getters: NotFound when the key is absent, InvalidArgument when its type does not fit
  // (messages name the file and the key). GetInt accepts any integer type; GetFloat also integers.
  StatusOr<int64_t> GetInt(std::string_view key) const;
  StatusOr<double> GetFloat(std::string_view key) const;
  StatusOr<bool> GetBool(std::string_view key) const;
  StatusOr<std::string> GetString(std::string_view key) const;
  StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const;
  StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;
  // The same for optional keys: nullopt when absent, still an error when present but mistyped.
  StatusOr<std::optional<int64_t>> FindInt(std::string_view key) const;
  StatusOr<std::optional<double>> FindFloat(std::string_view key) const;
  StatusOr<std::optional<bool>> FindBool(std::string_view key) const;
  StatusOr<std::optional<std::string>> FindString(std::string_view key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(std::string_view name) const;
  // The tensor's bytes inside the mapping (valid while this file lives).
  std::span<const std::byte> TensorData(const GgufTensorInfo& info) const;

 private:
  GgufFile() = default;

  std::filesystem::path path_;
  const std::byte* map_ = nullptr;
  size_t map_size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::unordered_map<std::string, size_t> metadata_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;

  friend class GgufParser;
};

}  // namespace tandem
