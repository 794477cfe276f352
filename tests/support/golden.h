// Goldens: typed access to a model's `goldens.safetensors` (reference outputs computed by HF
// transformers; see ../shared/testdata/README.md beside the checkout) for tests of every module.
//
//   tandem::testing::Goldens goldens("tiny-llama");
//   auto ids = goldens.Int64("p2.input_ids");          // ids.values, ids.shape == {17}
//   auto logits = goldens.Float("p2.last_logits");     // float32 [vocab]
//
// Missing files or tensors fail the calling test (ADD_FAILURE) and yield empty tensors, so a test
// can never pass vacuously on missing references.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tandem {
class SafetensorsFile;
}

namespace tandem::testing {

template <typename T>
struct GoldenTensor {
  std::vector<int64_t> shape;
  std::vector<T> values;  // row-major

  int64_t numel() const { return static_cast<int64_t>(values.size()); }
  bool empty() const { return values.empty(); }
  // Row `i` of a 2-D tensor.
  std::vector<T> Row(int64_t i) const {
    if (shape.size() != 2 || i < 0 || i >= shape[0]) return {};
    auto begin = values.begin() + i * shape[1];
    return std::vector<T>(begin, begin + shape[1]);
  }
};

class Goldens {
 public:
  // ModelDir(model_name)/goldens.safetensors.
  explicit Goldens(const std::string& model_name);
  // Any safetensors file.
  static Goldens FromFile(const std::filesystem::path& path);

  bool ok() const { return file_ != nullptr; }
  const std::filesystem::path& path() const { return path_; }
  bool Has(std::string_view name) const;
  std::vector<std::string> Names() const;
  // Number of prompts p0..pN-1 (counted by their `pN.input_ids`).
  int NumPrompts() const;

  // Integer tensors (I64/I32/I16/I8/U8/BOOL), widened to int64.
  GoldenTensor<int64_t> Int64(std::string_view name) const;
  // Float tensors (F32/F16/BF16/F64), converted to float.
  GoldenTensor<float> Float(std::string_view name) const;

 private:
  Goldens() = default;
  void Open(const std::filesystem::path& path);

  std::filesystem::path path_;
  std::shared_ptr<const SafetensorsFile> file_;
};

}  // namespace tandem::testing
