#include "model/gguf_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "tandem/check.h"

namespace tandem {
namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxArrayDepth = 8;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS

// Smallest encoding of one value of `type`: bounds array lengths by the bytes left.
uint64_t MinEncodedSize(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool: return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16: return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32: return 4;
    case GgufValueType::kString: return 8;
    case GgufValueType::kArray: return 12;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64: return 8;
  }
  return 1;
}

bool KnownValueType(uint32_t raw) { return raw <= static_cast<uint32_t>(GgufValueType::kFloat64); }

std::string Quote(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('\'');
  out.append(s);
  out.push_back('\'');
  return out;
}

}  // namespace

std::string_view GgufValueTypeName(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8: return "uint8";
    case GgufValueType::kInt8: return "int8";
    case GgufValueType::kUint16: return "uint16";
    case GgufValueType::kInt16: return "int16";
    case GgufValueType::kUint32: return "uint32";
    case GgufValueType::kInt32: return "int32";
    case GgufValueType::kFloat32: return "float32";
    case GgufValueType::kBool: return "bool";
    case GgufValueType::kString: return "string";
    case GgufValueType::kArray: return "array";
    case GgufValueType::kUint64: return "uint64";
    case GgufValueType::kInt64: return "int64";
    case GgufValueType::kFloat64: return "float64";
  }
  return "unknown";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kUint64:
    case GgufValueType::kInt64: return true;
    default: return false;
  }
}

bool GgufValue::is_float() const {
  return type == GgufValueType::kFloat32 || type == GgufValueType::kFloat64;
}

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

std::vector<int64_t> GgufTensorInfo::shape() const { return {ne.rbegin(), ne.rend()}; }

// Reads the header of a mapped file; every read is bounds-checked against the mapping.
class GgufParser {
 public:
  explicit GgufParser(GgufFile& file) : file_(file), data_(file.map_), size_(file.map_size_) {}

  Status Parse() {
    uint32_t magic = 0;
    TANDEM_RETURN_IF_ERROR(ReadPod(&magic, "the magic"));
    if (magic != kGgufMagic) {
      return InvalidArgumentError(Where() + "not a GGUF file (magic bytes are not 'GGUF')");
    }
    TANDEM_RETURN_IF_ERROR(ReadPod(&file_.version_, "the version"));
    const uint32_t version = file_.version_;
    if (version != 2 && version != 3) {
      if ((version & 0xffffu) == 0 && version != 0) {
        return InvalidArgumentError(Where() + "big-endian GGUF files are not supported");
      }
      return InvalidArgumentError(Where() + "GGUF version " + std::to_string(version) +
                                  " is not supported (only versions 2 and 3)");
    }
    uint64_t tensor_count = 0;
    uint64_t kv_count = 0;
    TANDEM_RETURN_IF_ERROR(ReadPod(&tensor_count, "the tensor count"));
    TANDEM_RETURN_IF_ERROR(ReadPod(&kv_count, "the metadata count"));
    // Each key/value takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor info at
    // least 8 (name length) + 4 (n_dims) + 8 (ne[0]) + 4 (type) + 8 (offset).
    if (kv_count > Remaining() / 13) {
      return DataLossError(Where() + "metadata count " + std::to_string(kv_count) +
                           " cannot fit in the " + std::to_string(size_) + "-byte file");
    }
    if (tensor_count > Remaining() / 32) {
      return DataLossError(Where() + "tensor count " + std::to_string(tensor_count) +
                           " cannot fit in the " + std::to_string(size_) + "-byte file");
    }

    file_.metadata_.reserve(kv_count);
    for (uint64_t i = 0; i < kv_count; ++i) {
      std::string key;
      TANDEM_RETURN_IF_ERROR(ReadString(&key, "metadata key #" + std::to_string(i)));
      GgufValue value;
      TANDEM_RETURN_IF_ERROR(ReadTypedValue(&value, key, 0));
      if (!file_.metadata_index_.emplace(key, file_.metadata_.size()).second) {
        return InvalidArgumentError(Where() + "metadata key " + Quote(key) + " appears twice");
      }
      file_.metadata_.emplace_back(std::move(key), std::move(value));
    }

    if (const GgufValue* v = file_.FindValue("general.alignment")) {
      if (v->type != GgufValueType::kUint32) {
        return InvalidArgumentError(Where() + "'general.alignment' must be a uint32, got " +
                                    std::string(GgufValueTypeName(v->type)));
      }
      const uint64_t a = v->uint_value;
      if (a == 0 || (a & (a - 1)) != 0) {
        return InvalidArgumentError(Where() + "'general.alignment' must be a power of two, got " +
                                    std::to_string(a));
      }
      file_.alignment_ = a;
    } else {
      file_.alignment_ = kDefaultAlignment;
    }

    file_.tensors_.reserve(tensor_count);
    for (uint64_t i = 0; i < tensor_count; ++i) {
      GgufTensorInfo info;
      TANDEM_RETURN_IF_ERROR(ReadTensorInfo(&info, i));
      if (!file_.tensor_index_.emplace(info.name, file_.tensors_.size()).second) {
        return InvalidArgumentError(Where() + "tensor " + Quote(info.name) + " appears twice");
      }
      file_.tensors_.push_back(std::move(info));
    }

    const uint64_t align = file_.alignment_;
    const uint64_t data_offset = (pos_ + align - 1) / align * align;
    file_.data_offset_ = data_offset;
    if (!file_.tensors_.empty() && data_offset > size_) {
      return DataLossError(Where() + "truncated: the data section would start at byte " +
                           std::to_string(data_offset) + " of a " + std::to_string(size_) +
                           "-byte file");
    }
    return CheckTensorRanges();
  }

 private:
  std::string Where() const { return file_.path_.string() + ": "; }
  uint64_t Remaining() const { return size_ - pos_; }

  Status Truncated(const std::string& what) const {
    return DataLossError(Where() + "truncated file: " + std::to_string(size_) +
                         " bytes end inside " + what + " (at byte " + std::to_string(pos_) + ")");
  }

  template <typename T>
  Status ReadPod(T* out, const std::string& what) {
    if (Remaining() < sizeof(T)) return Truncated(what);
    std::memcpy(out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return OkStatus();
  }

  Status ReadString(std::string* out, const std::string& what) {
    uint64_t len = 0;
    TANDEM_RETURN_IF_ERROR(ReadPod(&len, "the length of " + what));
    if (len > Remaining()) {
      return DataLossError(Where() + "length " + std::to_string(len) + " of " + what +
                           " runs past the end of the file (" + std::to_string(Remaining()) +
                           " bytes left at byte " + std::to_string(pos_) + ")");
    }
    out->assign(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return OkStatus();
  }

  Status ReadTypedValue(GgufValue* out, const std::string& key, int depth) {
    uint32_t raw_type = 0;
    TANDEM_RETURN_IF_ERROR(ReadPod(&raw_type, "the type of metadata key " + Quote(key)));
    if (!KnownValueType(raw_type)) {
      return InvalidArgumentError(Where() + "metadata key " + Quote(key) +
                                  " has unknown value type " + std::to_string(raw_type));
    }
    return ReadValue(out, static_cast<GgufValueType>(raw_type), key, depth);
  }

  Status ReadValue(GgufValue* out, GgufValueType type, const std::string& key, int depth) {
    out->type = type;
    const std::string what = "the value of metadata key " + Quote(key);
    switch (type) {
      case GgufValueType::kUint8: return ReadUint<uint8_t>(out, what);
      case GgufValueType::kUint16: return ReadUint<uint16_t>(out, what);
      case GgufValueType::kUint32: return ReadUint<uint32_t>(out, what);
      case GgufValueType::kUint64: return ReadUint<uint64_t>(out, what);
      case GgufValueType::kInt8: return ReadInt<int8_t>(out, what);
      case GgufValueType::kInt16: return ReadInt<int16_t>(out, what);
      case GgufValueType::kInt32: return ReadInt<int32_t>(out, what);
      case GgufValueType::kInt64: return ReadInt<int64_t>(out, what);
      case GgufValueType::kFloat32: {
        float f = 0;
        TANDEM_RETURN_IF_ERROR(ReadPod(&f, what));
        out->float_value = f;
        return OkStatus();
      }
      case GgufValueType::kFloat64: return ReadPod(&out->float_value, what);
      case GgufValueType::kBool: {
        uint8_t b = 0;
        TANDEM_RETURN_IF_ERROR(ReadPod(&b, what));
        if (b > 1) {
          return InvalidArgumentError(Where() + "metadata key " + Quote(key) +
                                      " holds bool value " + std::to_string(b) + " (not 0 or 1)");
        }
        out->uint_value = b;
        return OkStatus();
      }
      case GgufValueType::kString: return ReadString(&out->string_value, what);
      case GgufValueType::kArray: return ReadArray(out, key, depth);
    }
    return InternalError("unreachable GGUF value type");
  }

  template <typename T>
  Status ReadUint(GgufValue* out, const std::string& what) {
    T v = 0;
    TANDEM_RETURN_IF_ERROR(ReadPod(&v, what));
    out->uint_value = v;
    return OkStatus();
  }
  template <typename T>
  Status ReadInt(GgufValue* out, const std::string& what) {
    T v = 0;
    TANDEM_RETURN_IF_ERROR(ReadPod(&v, what));
    out->int_value = v;
    return OkStatus();
  }

  Status ReadArray(GgufValue* out, const std::string& key, int depth) {
    if (depth >= kMaxArrayDepth) {
      return InvalidArgumentError(Where() + "metadata key " + Quote(key) + " nests arrays deeper than " +
                                  std::to_string(kMaxArrayDepth) + " levels");
    }
    uint32_t raw_type = 0;
    TANDEM_RETURN_IF_ERROR(ReadPod(&raw_type, "the element type of metadata array " + Quote(key)));
    if (!KnownValueType(raw_type)) {
      return InvalidArgumentError(Where() + "metadata array " + Quote(key) +
                                  " has unknown element type " + std::to_string(raw_type));
    }
    const auto element_type = static_cast<GgufValueType>(raw_type);
    uint64_t n = 0;
    TANDEM_RETURN_IF_ERROR(ReadPod(&n, "the length of metadata array " + Quote(key)));
    if (n > Remaining() / MinEncodedSize(element_type)) {
      return DataLossError(Where() + "metadata array " + Quote(key) + " claims " +
                           std::to_string(n) + " " + std::string(GgufValueTypeName(element_type)) +
                           " elements, more than the " + std::to_string(Remaining()) +
                           " bytes left can hold");
    }
    out->element_type = element_type;
    out->elements.resize(n);
    for (uint64_t i = 0; i < n; ++i) {
      GgufValue& e = out->elements[i];
      if (element_type == GgufValueType::kArray) {
        TANDEM_RETURN_IF_ERROR(ReadArray(&e, key + "[" + std::to_string(i) + "]", depth + 1));
        e.type = GgufValueType::kArray;
      } else {
        TANDEM_RETURN_IF_ERROR(ReadValue(&e, element_type, key, depth + 1));
      }
    }
    return OkStatus();
  }

  Status ReadTensorInfo(GgufTensorInfo* info, uint64_t index) {
    const std::string label = "tensor info #" + std::to_string(index);
    TANDEM_RETURN_IF_ERROR(ReadString(&info->name, "the name of " + label));
    const std::string tensor = "tensor " + Quote(info->name);
    uint32_t n_dims = 0;
    TANDEM_RETURN_IF_ERROR(ReadPod(&n_dims, "the dimension count of " + tensor));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return InvalidArgumentError(Where() + tensor + " has " + std::to_string(n_dims) +
                                  " dimensions (allowed: 1 to " + std::to_string(kMaxDims) + ")");
    }
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne = 0;
      TANDEM_RETURN_IF_ERROR(ReadPod(&ne, "the shape of " + tensor));
      if (ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          __builtin_mul_overflow(numel, static_cast<int64_t>(ne), &numel)) {
        return InvalidArgumentError(Where() + tensor + " has an absurd shape (dimension " +
                                    std::to_string(d) + " = " + std::to_string(ne) + ")");
      }
      info->ne.push_back(static_cast<int64_t>(ne));
    }
    uint32_t raw_type = 0;
    TANDEM_RETURN_IF_ERROR(ReadPod(&raw_type, "the type of " + tensor));
    const GgmlTypeTraits* traits = FindGgmlTypeTraits(raw_type);
    if (traits == nullptr) {
      return InvalidArgumentError(Where() + tensor + " has unknown ggml type " +
                                  std::to_string(raw_type));
    }
    info->type = traits->type;
    if (info->ne[0] % traits->block_size != 0) {
      return InvalidArgumentError(Where() + tensor + " has rows of " + std::to_string(info->ne[0]) +
                                  " elements, not a multiple of the " + std::string(traits->name) +
                                  " block size " + std::to_string(traits->block_size));
    }
    int64_t nbytes = 0;
    if (__builtin_mul_overflow(numel / traits->block_size, traits->type_size, &nbytes)) {
      return InvalidArgumentError(Where() + tensor + " has an absurd size");
    }
    info->nbytes = static_cast<uint64_t>(nbytes);
    TANDEM_RETURN_IF_ERROR(ReadPod(&info->offset, "the data offset of " + tensor));
    return OkStatus();
  }

  Status CheckTensorRanges() {
    const uint64_t data_size = size_ - std::min<uint64_t>(size_, file_.data_offset_);
    std::vector<const GgufTensorInfo*> by_offset;
    for (const GgufTensorInfo& t : file_.tensors_) {
      if (t.offset % file_.alignment_ != 0) {
        return InvalidArgumentError(Where() + "tensor " + Quote(t.name) + " starts at offset " +
                                    std::to_string(t.offset) + ", not a multiple of the alignment " +
                                    std::to_string(file_.alignment_));
      }
      if (t.offset > data_size || t.nbytes > data_size - t.offset) {
        return DataLossError(Where() + "tensor " + Quote(t.name) + " data [" +
                             std::to_string(t.offset) + ", " + std::to_string(t.offset + t.nbytes) +
                             ") runs past the end of the data section (" +
                             std::to_string(data_size) + " bytes): the file is truncated or corrupt");
      }
      by_offset.push_back(&t);
    }
    std::sort(by_offset.begin(), by_offset.end(),
              [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
    for (size_t i = 1; i < by_offset.size(); ++i) {
      const GgufTensorInfo& prev = *by_offset[i - 1];
      if (prev.nbytes > 0 && by_offset[i]->offset < prev.offset + prev.nbytes) {
        return InvalidArgumentError(Where() + "tensors " + Quote(prev.name) + " and " +
                                    Quote(by_offset[i]->name) + " overlap in the data section");
      }
    }
    return OkStatus();
  }

  GgufFile& file_;
  const std::byte* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

StatusOr<std::shared_ptr<const GgufFile>> GgufFile::Open(const std::filesystem::path& path) {
  std::shared_ptr<GgufFile> file(new GgufFile());
  file->path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return NotFoundError(path.string() + ": no such GGUF file");
    return InvalidArgumentError(path.string() + ": cannot open: " + std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgumentError(path.string() + ": not a regular file");
  }
  const auto size = static_cast<size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    return DataLossError(path.string() + ": truncated file: it is empty (expected a GGUF header)");
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);
  if (map == MAP_FAILED) {
    return InvalidArgumentError(path.string() + ": cannot memory-map " + std::to_string(size) +
                                " bytes: " + std::strerror(map_err));
  }
  file->map_ = static_cast<const std::byte*>(map);
  file->map_size_ = size;
  GgufParser parser(*file);
  TANDEM_RETURN_IF_ERROR(parser.Parse());
  return std::shared_ptr<const GgufFile>(std::move(file));
}

GgufFile::~GgufFile() {
  if (map_ != nullptr) ::munmap(const_cast<std::byte*>(map_), map_size_);
}

const GgufValue* GgufFile::FindValue(std::string_view key) const {
  auto it = metadata_index_.find(std::string(key));
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> GgufFile::TensorData(const GgufTensorInfo& info) const {
  // Validated at Open(): [offset, offset + nbytes) lies inside the data section.
  TANDEM_CHECK(data_offset_ + info.offset + info.nbytes <= map_size_) << info.name;
  return {map_ + data_offset_ + info.offset, static_cast<size_t>(info.nbytes)};
}

namespace {

Status WrongType(const GgufFile& f, std::string_view key, std::string_view want,
                 const GgufValue& v) {
  std::string got(GgufValueTypeName(v.type));
  if (v.type == GgufValueType::kArray) got += " of " + std::string(GgufValueTypeName(v.element_type));
  return InvalidArgumentError(f.path().string() + ": metadata key " + Quote(key) + " must be " +
                              std::string(want) + ", got " + got);
}

Status Missing(const GgufFile& f, std::string_view key) {
  return NotFoundError(f.path().string() + ": metadata key " + Quote(key) + " is missing");
}

// Integer value of `v` as int64, or nullopt when it does not fit.
std::optional<int64_t> AsInt(const GgufValue& v) {
  switch (v.type) {
    case GgufValueType::kInt8:
    case GgufValueType::kInt16:
    case GgufValueType::kInt32:
    case GgufValueType::kInt64: return v.int_value;
    case GgufValueType::kUint8:
    case GgufValueType::kUint16:
    case GgufValueType::kUint32:
    case GgufValueType::kUint64:
      if (v.uint_value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return std::nullopt;
      }
      return static_cast<int64_t>(v.uint_value);
    default: return std::nullopt;
  }
}

}  // namespace

StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  const GgufValue* v = FindValue(key);
  if (v == nullptr) return Missing(*this, key);
  std::optional<int64_t> i = AsInt(*v);
  if (!i) return WrongType(*this, key, "an integer that fits in int64", *v);
  return *i;
}

StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  const GgufValue* v = FindValue(key);
  if (v == nullptr) return Missing(*this, key);
  if (v->is_float()) return v->float_value;
  if (std::optional<int64_t> i = AsInt(*v)) return static_cast<double>(*i);
  return WrongType(*this, key, "a number", *v);
}

StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  const GgufValue* v = FindValue(key);
  if (v == nullptr) return Missing(*this, key);
  if (v->type != GgufValueType::kBool) return WrongType(*this, key, "a bool", *v);
  return v->uint_value != 0;
}

StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  const GgufValue* v = FindValue(key);
  if (v == nullptr) return Missing(*this, key);
  if (v->type != GgufValueType::kString) return WrongType(*this, key, "a string", *v);
  return v->string_value;
}

StatusOr<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  const GgufValue* v = FindValue(key);
  if (v == nullptr) return Missing(*this, key);
  if (v->type != GgufValueType::kArray || v->element_type != GgufValueType::kString) {
    return WrongType(*this, key, "an array of strings", *v);
  }
  std::vector<std::string> out;
  out.reserve(v->elements.size());
  for (const GgufValue& e : v->elements) out.push_back(e.string_value);
  return out;
}

StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  const GgufValue* v = FindValue(key);
  if (v == nullptr) return Missing(*this, key);
  if (v->type != GgufValueType::kArray) return WrongType(*this, key, "an array of integers", *v);
  std::vector<int64_t> out;
  out.reserve(v->elements.size());
  for (const GgufValue& e : v->elements) {
    std::optional<int64_t> i = AsInt(e);
    if (!i) return WrongType(*this, key, "an array of integers", *v);
    out.push_back(*i);
  }
  return out;
}

StatusOr<std::optional<int64_t>> GgufFile::FindInt(std::string_view key) const {
  if (FindValue(key) == nullptr) return std::optional<int64_t>();
  TANDEM_ASSIGN_OR_RETURN(int64_t v, GetInt(key));
  return std::optional<int64_t>(v);
}

StatusOr<std::optional<double>> GgufFile::FindFloat(std::string_view key) const {
  if (FindValue(key) == nullptr) return std::optional<double>();
  TANDEM_ASSIGN_OR_RETURN(double v, GetFloat(key));
  return std::optional<double>(v);
}

StatusOr<std::optional<bool>> GgufFile::FindBool(std::string_view key) const {
  if (FindValue(key) == nullptr) return std::optional<bool>();
  TANDEM_ASSIGN_OR_RETURN(bool v, GetBool(key));
  return std::optional<bool>(v);
}

StatusOr<std::optional<std::string>> GgufFile::FindString(std::string_view key) const {
  if (FindValue(key) == nullptr) return std::optional<std::string>();
  TANDEM_ASSIGN_OR_RETURN(std::string v, GetString(key));
  return std::optional<std::string>(std::move(v));
}

}  // namespace tandem
