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

GoldenTensor<int64_t> Goldens::Int64(std::string_view name) const {
  GoldenTensor<int64_t> out;
  if (!file_) return out;
  const SafetensorsTensorInfo* info = file_->Find(name);
  if (info == nullptr) {
    ADD_FAILURE() << path_ << ": no golden tensor '" << name << "'";
    return out;
  }
  HostTensor t = file_->View(*info);
  out.shape = t.shape;
  const int64_t n = t.numel();
  out.values.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    int64_t v = 0;
    switch (t.dtype) {
      case DType::kI64: v = Load<int64_t>(t.data, i); break;
      case DType::kI32: v = Load<int32_t>(t.data, i); break;
      case DType::kI16: v = Load<int16_t>(t.data, i); break;
      case DType::kI8: v = Load<int8_t>(t.data, i); break;
      case DType::kU8:
      case DType::kBool: v = Load<uint8_t>(t.data, i); break;
      default:
        ADD_FAILURE() << path_ << ": golden tensor '" << name << "' is " << DTypeName(t.dtype)
                      << ", not an integer tensor";
        return {};
    }
    out.values[static_cast<size_t>(i)] = v;
  }
  return out;
}

GoldenTensor<float> Goldens::Float(std::string_view name) const {
  GoldenTensor<float> out;
  if (!file_) return out;
  const SafetensorsTensorInfo* info = file_->Find(name);
  if (info == nullptr) {
    ADD_FAILURE() << path_ << ": no golden tensor '" << name << "'";
    return out;
  }
  HostTensor t = file_->View(*info);
  out.shape = t.shape;
  const int64_t n = t.numel();
  out.values.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    float v = 0;
    switch (t.dtype) {
      case DType::kF32: v = Load<float>(t.data, i); break;
      case DType::kF64: v = static_cast<float>(Load<double>(t.data, i)); break;
      case DType::kF16: v = F16ToF32(Load<uint16_t>(t.data, i)); break;
      case DType::kBF16: v = Bf16ToF32(Load<uint16_t>(t.data, i)); break;
      default:
        ADD_FAILURE() << path_ << ": golden tensor '" << name << "' is " << DTypeName(t.dtype)
                      << ", not a float tensor";
        return {};
    }
    out.values[static_cast<size_t>(i)] = v;
  }
  return out;
}

}  // namespace tandem::testing
