#include "support/golden.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include "common/half.h"
#include "model/safetensors_checkpoint.h"
#include "support/testdata.h"

namespace tandem::testing {
namespace {

template <typename Src>
Src Load(const std::byte* p, int64_t i) {
  Src v;
  std::memcpy(&v, p + i * static_cast<int64_t>(sizeof(Src)), sizeof(Src));
  return v;
}

}  // namespace

Goldens::Goldens(const std::string& model_name) { Open(ModelDir(model_name) / "goldens.safetensors"); }

Goldens Goldens::FromFile(const std::filesystem::path& path) {
  Goldens g;
  g.Open(path);
  return g;
}

void Goldens::Open(const std::filesystem::path& path) {
  path_ = path;
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) {
    ADD_FAILURE() << "cannot load goldens: " << file.status().ToString();
    return;
  }
  file_ = std::move(file).value();
}

bool Goldens::Has(std::string_view name) const { return file_ && file_->Find(name) != nullptr; }

std::vector<std::string> Goldens::Names() const {
  std::vector<std::string> names;
  if (!file_) return names;
  for (const auto& t : file_->tensors()) names.push_back(t.name);
  std::sort(names.begin(), names.end());
  return names;
}

int Goldens::NumPrompts() const {
  int n = 0;
  while (Has("p" + std::to_string(n) + ".input_ids")) ++n;
  return n;
}

// Reads tensor `name` element by element through `load(dtype, data, i, &value)`, which returns
// false for a dtype of the wrong kind.
template <typename T, typename LoadFn>
GoldenTensor<T> ReadGolden(const SafetensorsFile* file, const std::filesystem::path& path,
                           std::string_view name, const char* kind, LoadFn load) {
  GoldenTensor<T> out;
  if (file == nullptr) return out;
  const SafetensorsTensorInfo* info = file->Find(name);
  if (info == nullptr) {
    ADD_FAILURE() << path << ": no golden tensor '" << name << "'";
    return out;
  }
  HostTensor t = file->View(*info);
  out.shape = t.shape;
  out.values.resize(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (!load(t.dtype, t.data, i, &out.values[static_cast<size_t>(i)])) {
      ADD_FAILURE() << path << ": golden tensor '" << name << "' is " << DTypeName(t.dtype)
                    << ", not " << kind << " tensor";
      return {};
    }
  }
  return out;
}

GoldenTensor<int64_t> Goldens::Int64(std::string_view name) const {
  return ReadGolden<int64_t>(file_.get(), path_, name, "an integer",
                             [](DType dtype, const std::byte* data, int64_t i, int64_t* v) {
                               switch (dtype) {
                                 case DType::kI64: *v = Load<int64_t>(data, i); return true;
                                 case DType::kI32: *v = Load<int32_t>(data, i); return true;
                                 case DType::kI16: *v = Load<int16_t>(data, i); return true;
                                 case DType::kI8: *v = Load<int8_t>(data, i); return true;
                                 case DType::kU8:
                                 case DType::kBool: *v = Load<uint8_t>(data, i); return true;
                                 default: return false;
                               }
                             });
}

GoldenTensor<float> Goldens::Float(std::string_view name) const {
  return ReadGolden<float>(file_.get(), path_, name, "a float",
                           [](DType dtype, const std::byte* data, int64_t i, float* v) {
                             switch (dtype) {
                               case DType::kF32: *v = Load<float>(data, i); return true;
                               case DType::kF64: *v = static_cast<float>(Load<double>(data, i)); return true;
                               case DType::kF16: *v = F16ToF32(Load<uint16_t>(data, i)); return true;
                               case DType::kBF16: *v = Bf16ToF32(Load<uint16_t>(data, i)); return true;
                               default: return false;
                             }
                           });
}

}  // namespace tandem::testing
