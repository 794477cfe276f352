// LlamaModel::Load validates a checkpoint against the config: a missing tensor, a wrong shape, an
// integer or F64 dtype each give an error naming the file and the tensor. The checkpoints are
// tiny-llama's own tensors rewritten into a scratch directory with one of them changed; an
// unchanged rewrite loads, so each failure is the change's doing.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "model/llama_model.h"
#include "model/model_config.h"
#include "model/safetensors_checkpoint.h"
#include "support/testdata.h"

namespace tandem {
namespace {

struct TensorBytes {
  std::string name;
  std::string dtype;  // safetensors spelling
  std::vector<int64_t> shape;
  std::string bytes;
};

std::vector<TensorBytes> TinyLlamaTensors() {
  auto file = SafetensorsFile::Open(testing::ModelDir("tiny-llama") / "model.safetensors");
  EXPECT_TRUE(file.ok()) << file.status().ToString();
  std::vector<TensorBytes> out;
  if (!file.ok()) return out;
  for (const SafetensorsTensorInfo& info : (*file)->tensors()) {
    HostTensor view = (*file)->View(info);
    out.push_back({info.name, std::string(DTypeName(info.dtype)), info.shape,
                   std::string(reinterpret_cast<const char*>(view.data), view.nbytes())});
  }
  return out;
}

void WriteSafetensors(const std::filesystem::path& path, const std::vector<TensorBytes>& tensors) {
  std::string header = "{";
  std::string data;
  for (const TensorBytes& t : tensors) {
    if (header.size() > 1) header += ",";
    std::string shape;
    for (int64_t d : t.shape) shape += (shape.empty() ? "" : ",") + std::to_string(d);
    header += "\"" + t.name + "\":{\"dtype\":\"" + t.dtype + "\",\"shape\":[" + shape +
              "],\"data_offsets\":[" + std::to_string(data.size()) + "," +
              std::to_string(data.size() + t.bytes.size()) + "]}";
    data += t.bytes;
  }
  header += "}";
  while (header.size() % 8 != 0) header += " ";
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = header.size();
  char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out.write(len, 8);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

class WeightValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto config = LoadModelConfig(testing::ModelDir("tiny-llama"));
    ASSERT_TRUE(config.ok()) << config.status().ToString();
    config_ = *config;
    tensors_ = TinyLlamaTensors();
    ASSERT_FALSE(tensors_.empty());
  }

  TensorBytes* Find(const std::string& name) {
    for (auto& t : tensors_) {
      if (t.name == name) return &t;
    }
    ADD_FAILURE() << "tiny-llama has no tensor " << name;
    return nullptr;
  }

  // Writes the (modified) tensors and loads them; returns the status of Load.
  Status WriteAndLoad() {
    path_ = scratch_.path() / "model.safetensors";
    WriteSafetensors(path_, tensors_);
    auto ckpt = SafetensorsCheckpoint::Open(scratch_.path());
    if (!ckpt.ok()) return ckpt.status().WithContext("test checkpoint did not open");
    CpuBackend backend(CpuBackendConfig{1});
    auto model = LlamaModel::Load(config_, **ckpt, backend, 64);
    return model.status();
  }

  void ExpectErrorNaming(const Status& s, const std::vector<std::string>& parts) {
    ASSERT_FALSE(s.ok()) << "the checkpoint loaded";
    EXPECT_NE(s.ToString().find(path_.string()), std::string::npos)
        << "error does not name the file " << path_ << ": " << s.ToString();
    for (const std::string& p : parts) {
      EXPECT_NE(s.ToString().find(p), std::string::npos) << "error lacks '" << p << "': " << s.ToString();
    }
  }

  testing::ScratchDir scratch_;
  std::filesystem::path path_;
  ModelConfig config_;
  std::vector<TensorBytes> tensors_;
};

TEST_F(WeightValidationTest, UnchangedCopyLoads) {
  const Status s = WriteAndLoad();
  EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST_F(WeightValidationTest, MissingTensor) {
  const std::string name = "model.layers.1.mlp.down_proj.weight";
  std::erase_if(tensors_, [&](const TensorBytes& t) { return t.name == name; });
  const Status s = WriteAndLoad();
  ExpectErrorNaming(s, {name});
  EXPECT_EQ(s.code(), StatusCode::kNotFound) << s.ToString();
}

TEST_F(WeightValidationTest, WrongShape) {
  const std::string name = "model.layers.0.self_attn.k_proj.weight";
  TensorBytes* t = Find(name);
  ASSERT_NE(t, nullptr);
  ASSERT_EQ(t->shape.size(), 2u);
  ASSERT_NE(t->shape[0], t->shape[1]);
  const std::vector<int64_t> want = t->shape;
  std::swap(t->shape[0], t->shape[1]);  // same bytes, transposed shape
  const Status s = WriteAndLoad();
  ExpectErrorNaming(s, {name, "[" + std::to_string(want[1]) + ", " + std::to_string(want[0]) + "]",
                        "[" + std::to_string(want[0]) + ", " + std::to_string(want[1]) + "]"});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
}

TEST_F(WeightValidationTest, WrongRank) {
  const std::string name = "model.layers.1.input_layernorm.weight";
  TensorBytes* t = Find(name);
  ASSERT_NE(t, nullptr);
  t->shape = {1, t->shape[0]};
  ExpectErrorNaming(WriteAndLoad(), {name, "shape"});
}

TEST_F(WeightValidationTest, IntegerDTypes) {
  // I16: same size as BF16, so only the dtype is wrong.
  const std::string up = "model.layers.0.mlp.up_proj.weight";
  TensorBytes* t = Find(up);
  ASSERT_NE(t, nullptr);
  ASSERT_EQ(t->dtype, "BF16");
  t->dtype = "I16";
  ExpectErrorNaming(WriteAndLoad(), {up, "I16"});
}

TEST_F(WeightValidationTest, Int32Norm) {
  const std::string norm = "model.norm.weight";
  TensorBytes* t = Find(norm);
  ASSERT_NE(t, nullptr);
  t->dtype = "I32";
  t->bytes += t->bytes;  // 4 bytes an element
  const Status s = WriteAndLoad();
  ExpectErrorNaming(s, {norm, "I32"});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
}

TEST_F(WeightValidationTest, Float64IsRejected) {
  const std::string name = "model.layers.1.post_attention_layernorm.weight";
  TensorBytes* t = Find(name);
  ASSERT_NE(t, nullptr);
  t->dtype = "F64";
  t->bytes += t->bytes;
  t->bytes += t->bytes;  // 8 bytes an element
  ExpectErrorNaming(WriteAndLoad(), {name, "F64"});
}

}  // namespace
}  // namespace tandem
