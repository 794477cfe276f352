#include "model/safetensors_checkpoint.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <unordered_set>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "tandem/check.h"

namespace tandem {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors headers are little-endian; big-endian hosts are not supported");

// The safetensors reference implementation refuses headers above 100 MB; so do we.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr std::string_view kSingleFileName = "model.safetensors";
constexpr std::string_view kIndexFileName = "model.safetensors.index.json";

using Json = nlohmann::json;

std::optional<DType> ParseDType(std::string_view name) {
  static constexpr std::pair<std::string_view, DType> kNames[] = {
      {"F32", DType::kF32}, {"F16", DType::kF16}, {"BF16", DType::kBF16}, {"F64", DType::kF64},
      {"I64", DType::kI64}, {"I32", DType::kI32}, {"I16", DType::kI16},   {"I8", DType::kI8},
      {"U8", DType::kU8},   {"BOOL", DType::kBool},
  };
  for (const auto& [n, d] : kNames) {
    if (n == name) return d;
  }
  return std::nullopt;
}

// Reads a JSON value that must be a non-negative integer that fits in uint64_t.
std::optional<uint64_t> AsNonNegativeInt(const Json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) {
    int64_t x = v.get<int64_t>();
    if (x >= 0) return static_cast<uint64_t>(x);
  }
  return std::nullopt;
}

// Validates one header entry and fills `info` (offsets not yet checked against the file size).
Status ParseTensorEntry(const std::string& file, const std::string& name, const Json& entry,
                        uint64_t data_size, SafetensorsTensorInfo* info) {
  auto error = [&](const std::string& what) {
    return InvalidArgumentError(fmt::format("{}: tensor '{}': {}", file, name, what));
  };
  if (!entry.is_object()) {
    return error(fmt::format("header entry must be an object with dtype, shape and data_offsets, "
                             "got {}",
                             entry.type_name()));
  }
  info->name = name;

  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) return error("missing string field 'dtype'");
  const std::string dtype_name = dtype_it->get<std::string>();
  std::optional<DType> dtype = ParseDType(dtype_name);
  if (!dtype) {
    return error(fmt::format("unsupported dtype '{}' (supported: F32, F16, BF16, F64, I64, I32, "
                             "I16, I8, U8, BOOL)",
                             dtype_name));
  }
  info->dtype = *dtype;

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) return error("missing array field 'shape'");
  uint64_t numel = 1;
  bool numel_overflow = false;
  info->shape.clear();
  for (const Json& d : *shape_it) {
    std::optional<uint64_t> dim = AsNonNegativeInt(d);
    if (!dim || *dim > static_cast<uint64_t>(INT64_MAX)) {
      return error(fmt::format("shape {} has a dimension that is not a non-negative integer",
                               shape_it->dump()));
    }
    info->shape.push_back(static_cast<int64_t>(*dim));
    if (__builtin_mul_overflow(numel, *dim, &numel)) numel_overflow = true;
  }
  uint64_t nbytes = 0;
  if (numel_overflow || __builtin_mul_overflow(numel, DTypeSize(info->dtype), &nbytes)) {
    return error(fmt::format("shape {} is too large", shape_it->dump()));
  }

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2) {
    return error("missing field 'data_offsets' (an array [begin, end])");
  }
  std::optional<uint64_t> begin = AsNonNegativeInt((*offsets_it)[0]);
  std::optional<uint64_t> end = AsNonNegativeInt((*offsets_it)[1]);
  if (!begin || !end) {
    return error(fmt::format("data_offsets {} must be non-negative integers", offsets_it->dump()));
  }
  if (*begin > *end) {
    return error(fmt::format("data_offsets {}: begin is after end", offsets_it->dump()));
  }
  if (*end > data_size) {
    return error(fmt::format("data_offsets {} run past the end of the data section ({} bytes); "
                             "the file is truncated or the header is corrupt",
                             offsets_it->dump(), data_size));
  }
  if (*end - *begin != nbytes) {
    return error(fmt::format("data_offsets {} span {} bytes but shape {} of {} needs {} bytes",
                             offsets_it->dump(), *end - *begin, shape_it->dump(), dtype_name,
                             nbytes));
  }
  info->begin = *begin;
  info->end = *end;
  return OkStatus();
}

StatusOr<std::string> ReadSmallFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError(fmt::format("{}: cannot open: {}", path.string(), std::strerror(errno)));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return DataLossError(fmt::format("{}: read failed", path.string()));
  return ss.str();
}

}  // namespace

// --- SafetensorsFile ------------------------------------------------------------------------------

StatusOr<std::shared_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::filesystem::path& path) {
  const std::string file = path.string();
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) return NotFoundError(fmt::format("{}: no such file", file));
    return InvalidArgumentError(fmt::format("{}: cannot open: {}", file, std::strerror(err)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return InvalidArgumentError(fmt::format("{}: cannot stat: {}", file, std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgumentError(fmt::format("{}: not a regular file", file));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return InvalidArgumentError(fmt::format(
        "{}: file is {} bytes, too short for the 8-byte safetensors header length", file, size));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);  // the mapping keeps the file open
  if (map == MAP_FAILED) {
    return InvalidArgumentError(fmt::format("{}: mmap of {} bytes failed: {}", file, size,
                                            std::strerror(map_errno)));
  }

  // From here on the object owns the mapping and unmaps it on every error path.
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->map_ = static_cast<const std::byte*>(map);
  f->map_size_ = size;

  uint64_t header_len = 0;
  std::memcpy(&header_len, f->map_, sizeof(header_len));
  if (header_len > size - 8) {
    return InvalidArgumentError(fmt::format(
        "{}: header length {} runs past the end of the file ({} bytes); not a safetensors file or "
        "truncated",
        file, header_len, size));
  }
  if (header_len > kMaxHeaderBytes) {
    return InvalidArgumentError(fmt::format("{}: header length {} exceeds the {} byte limit", file,
                                            header_len, kMaxHeaderBytes));
  }
  if (header_len < 2) {
    return InvalidArgumentError(
        fmt::format("{}: header length {} is too small for a JSON object", file, header_len));
  }
  const char* header_begin = reinterpret_cast<const char*>(f->map_ + 8);
  const char* header_end = header_begin + header_len;
  f->data_ = f->map_ + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;

  // nlohmann keeps the last of duplicate keys silently; catch duplicates at the top level.
  std::optional<std::string> duplicate;
  std::unordered_set<std::string> seen;
  Json::parser_callback_t on_event = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::key && depth == 1 && !duplicate) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!seen.insert(key).second) duplicate = key;
    }
    return true;
  };
  Json header;
  try {
    header = Json::parse(header_begin, header_end, on_event);
  } catch (const Json::exception& e) {
    return InvalidArgumentError(fmt::format("{}: malformed JSON header: {}", file, e.what()));
  }
  if (!header.is_object()) {
    return InvalidArgumentError(
        fmt::format("{}: JSON header must be an object, got {}", file, header.type_name()));
  }
  if (duplicate) {
    return InvalidArgumentError(
        fmt::format("{}: tensor '{}' appears more than once in the header", file, *duplicate));
  }

  f->tensors_.reserve(header.size());
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) {
        return InvalidArgumentError(fmt::format("{}: __metadata__ must be an object of strings", file));
      }
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) {
          return InvalidArgumentError(fmt::format(
              "{}: __metadata__ value for '{}' must be a string, got {}", file, m.key(), m->type_name()));
        }
        f->metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    SafetensorsTensorInfo info;
    TANDEM_RETURN_IF_ERROR(ParseTensorEntry(file, it.key(), *it, data_size, &info));
    f->tensors_.push_back(std::move(info));
  }

  std::sort(f->tensors_.begin(), f->tensors_.end(),
            [](const SafetensorsTensorInfo& a, const SafetensorsTensorInfo& b) {
              return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
            });
  for (size_t i = 1; i < f->tensors_.size(); ++i) {
    const SafetensorsTensorInfo& prev = f->tensors_[i - 1];
    const SafetensorsTensorInfo& cur = f->tensors_[i];
    if (cur.begin < prev.end) {
      return InvalidArgumentError(fmt::format(
          "{}: tensor '{}' (bytes [{}, {})) overlaps tensor '{}' (bytes [{}, {}))", file, cur.name,
          cur.begin, cur.end, prev.name, prev.begin, prev.end));
    }
  }
  f->index_.reserve(f->tensors_.size());
  for (size_t i = 0; i < f->tensors_.size(); ++i) f->index_.emplace(f->tensors_[i].name, i);
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(const_cast<std::byte*>(map_), map_size_);
}

const SafetensorsTensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

HostTensor SafetensorsFile::View(const SafetensorsTensorInfo& info) const {
  TANDEM_CHECK(info.end <= map_size_ - static_cast<size_t>(data_ - map_))
      << "tensor '" << info.name << "' is not from " << path_.string();
  HostTensor t;
  t.name = info.name;
  t.source = path_.string();
  t.dtype = info.dtype;
  t.shape = info.shape;
  t.data = data_ + info.begin;
  t.keepalive = shared_from_this();
  return t;
}

// --- SafetensorsCheckpoint ------------------------------------------------------------------------

StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::Open(
    const std::filesystem::path& dir) {
  std::unique_ptr<SafetensorsCheckpoint> ckpt(new SafetensorsCheckpoint());
  ckpt->dir_ = dir;
  std::error_code ec;

  // A single file named directly.
  if (std::filesystem::is_regular_file(dir, ec)) {
    TANDEM_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(dir));
    for (size_t t = 0; t < file->tensors().size(); ++t) {
      ckpt->index_.emplace(file->tensors()[t].name, std::make_pair(size_t{0}, t));
    }
    ckpt->files_.push_back(std::move(file));
    return ckpt;
  }
  if (!std::filesystem::is_directory(dir, ec)) {
    return NotFoundError(fmt::format("{}: no such model directory", dir.string()));
  }

  const std::filesystem::path index_path = dir / kIndexFileName;
  if (!std::filesystem::exists(index_path, ec)) {
    const std::filesystem::path single = dir / kSingleFileName;
    if (!std::filesystem::exists(single, ec)) {
      return NotFoundError(fmt::format("{}: no {} or {} in the model directory", dir.string(),
                                       kSingleFileName, kIndexFileName));
    }
    TANDEM_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single));
    for (size_t t = 0; t < file->tensors().size(); ++t) {
      ckpt->index_.emplace(file->tensors()[t].name, std::make_pair(size_t{0}, t));
    }
    ckpt->files_.push_back(std::move(file));
    return ckpt;
  }

  // Sharded: the index maps every tensor name to the shard file holding it.
  const std::string index_name = index_path.string();
  TANDEM_ASSIGN_OR_RETURN(std::string index_text, ReadSmallFile(index_path));
  Json index;
  try {
    index = Json::parse(index_text);
  } catch (const Json::exception& e) {
    return InvalidArgumentError(fmt::format("{}: malformed JSON: {}", index_name, e.what()));
  }
  if (!index.is_object()) {
    return InvalidArgumentError(fmt::format("{}: must be a JSON object", index_name));
  }
  auto wm = index.find("weight_map");
  if (wm == index.end() || !wm->is_object()) {
    return InvalidArgumentError(
        fmt::format("{}: missing 'weight_map' (an object mapping tensor names to shard files)",
                    index_name));
  }
  if (wm->empty()) {
    return InvalidArgumentError(fmt::format("{}: 'weight_map' is empty", index_name));
  }

  std::map<std::string, size_t> shard_ids;  // shard file name -> position in files_
  std::vector<std::pair<std::string, std::string>> entries;  // (tensor, shard)
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it->is_string()) {
      return InvalidArgumentError(fmt::format("{}: weight_map entry for tensor '{}' must be a shard "
                                              "file name, got {}",
                                              index_name, it.key(), it->type_name()));
    }
    std::string shard = it->get<std::string>();
    std::filesystem::path shard_path(shard);
    bool escapes = shard.empty() || shard_path.is_absolute();
    for (const auto& part : shard_path) escapes = escapes || part == "..";
    if (escapes) {
      return InvalidArgumentError(fmt::format("{}: tensor '{}' maps to shard '{}', which is not a "
                                              "file name inside the model directory",
                                              index_name, it.key(), shard));
    }
    shard_ids.emplace(shard, 0);
    entries.emplace_back(it.key(), std::move(shard));
  }
  for (auto& [shard, id] : shard_ids) {
    id = ckpt->files_.size();
    auto file = SafetensorsFile::Open(dir / shard);
    if (!file.ok()) {
      return file.status().WithContext(fmt::format("shard '{}' listed in {}", shard, index_name));
    }
    ckpt->files_.push_back(std::move(file).value());
  }
  for (const auto& [tensor, shard] : entries) {
    size_t file_id = shard_ids.at(shard);
    const SafetensorsFile& file = *ckpt->files_[file_id];
    const SafetensorsTensorInfo* info = file.Find(tensor);
    if (info == nullptr) {
      return InvalidArgumentError(fmt::format("{}: tensor '{}' is listed in shard '{}', but {} has "
                                              "no such tensor",
                                              index_name, tensor, shard, file.path().string()));
    }
    ckpt->index_.emplace(tensor, std::make_pair(file_id, static_cast<size_t>(info - file.tensors().data())));
  }
  for (const auto& file : ckpt->files_) {
    for (const auto& info : file->tensors()) {
      if (!ckpt->index_.contains(info.name)) {
        spdlog::warn("{}: tensor '{}' is not listed in {}; ignoring it", file->path().string(),
                     info.name, index_name);
      }
    }
  }
  return ckpt;
}

StatusOr<HostTensor> SafetensorsCheckpoint::Get(std::string_view name) const {
  auto it = index_.find(std::string(name));
  if (it == index_.end()) {
    return NotFoundError(fmt::format("tensor '{}' not found in {}", name, Describe()));
  }
  const SafetensorsFile& file = *files_[it->second.first];
  return file.View(file.tensors()[it->second.second]);
}

bool SafetensorsCheckpoint::Contains(std::string_view name) const {
  return index_.contains(std::string(name));
}

std::vector<std::string> SafetensorsCheckpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& [name, loc] : index_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

std::string SafetensorsCheckpoint::Describe() const {
  if (files_.size() == 1) return files_[0]->path().string();
  return fmt::format("{} ({} shards)", (dir_ / kIndexFileName).string(), files_.size());
}

}  // namespace tandem
