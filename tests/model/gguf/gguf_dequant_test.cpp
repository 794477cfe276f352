// Dequantization of every supported ggml type against gguf-py's numpy reference
// (gguf.quants.dequantize), on files written by the official `gguf` package (make_gguf.py).
#include "model/gguf_dequant.h"

#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>

#include "common/half.h"
#include "gguf_test_util.h"
#include "model/gguf_file.h"

namespace tandem {
namespace {

using gguf_test::GeneratedDir;
using gguf_test::ReadF32;
using gguf_test::ReadJson;

bool IsFloatType(GgmlType t) {
  return t == GgmlType::kF32 || t == GgmlType::kF16 || t == GgmlType::kBF16;
}

std::vector<float> ToF32(const GgufFile& file, const GgufTensorInfo& info, int threads = 1) {
  std::vector<float> out(static_cast<size_t>(info.numel()));
  DequantizeParams p;
  p.type = info.type;
  p.src = file.TensorData(info);
  p.n_cols = info.ne[0];
  p.n_rows = info.numel() / info.ne[0];
  p.out_dtype = DType::kF32;
  p.dst = std::as_writable_bytes(std::span<float>(out));
  p.num_threads = threads;
  Status s = Dequantize(p);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return out;
}

std::vector<uint16_t> ToBf16(const GgufFile& file, const GgufTensorInfo& info) {
  std::vector<uint16_t> out(static_cast<size_t>(info.numel()));
  DequantizeParams p;
  p.type = info.type;
  p.src = file.TensorData(info);
  p.n_cols = info.ne[0];
  p.n_rows = info.numel() / info.ne[0];
  p.out_dtype = DType::kBF16;
  p.dst = std::as_writable_bytes(std::span<uint16_t>(out));
  Status s = Dequantize(p);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return out;
}

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

TEST(GgufDequantTest, EveryTypeMatchesGgufPyReference) {
  const auto dir = GeneratedDir();
  const nlohmann::json manifest = ReadJson(dir / "types.json");
  auto file = GgufFile::Open(dir / "types.gguf");
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  ASSERT_EQ(manifest["tensors"].size(), 12u);
  for (const auto& t : manifest["tensors"]) {
    const std::string name = t["name"];
    SCOPED_TRACE(name);
    const GgufTensorInfo* info = (*file)->FindTensor(name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(GgmlTypeName(static_cast<uint32_t>(info->type)), t["type"].get<std::string>());
    EXPECT_EQ(info->shape(), t["shape"].get<std::vector<int64_t>>());
    const std::vector<float> ref = ReadF32(dir / t["ref"].get<std::string>());
    ASSERT_EQ(ref.size(), static_cast<size_t>(info->numel()));

    const std::vector<float> got = ToF32(**file, *info);
    float max_abs = 0;
    for (float r : ref) max_abs = std::max(max_abs, std::isinf(r) ? 0.f : std::fabs(r));
    // Float types are exact; quantized ones may differ by float contraction (FMA) only.
    const float tol = IsFloatType(info->type) ? 0.f : 4 * FLT_EPSILON * max_abs;
    size_t exact = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      if (IsFloatType(info->type)) {
        ASSERT_EQ(Bits(got[i]), Bits(ref[i])) << "element " << i << ": " << got[i] << " vs " << ref[i];
      } else {
        ASSERT_NEAR(got[i], ref[i], tol) << "element " << i;
      }
      exact += Bits(got[i]) == Bits(ref[i]);
    }
    RecordProperty(name + "_exact", std::to_string(exact) + "/" + std::to_string(ref.size()));

    // bf16 output is the f32 output rounded to nearest even (BF16 input: its bits, unchanged).
    const std::vector<uint16_t> bf16 = ToBf16(**file, *info);
    for (size_t i = 0; i < ref.size(); ++i) {
      ASSERT_EQ(bf16[i], F32ToBf16(got[i])) << "element " << i;
    }
  }
}

TEST(GgufDequantTest, ThreadsAndRowOrderGiveTheSameRows) {
  const auto dir = GeneratedDir();
  auto file = GgufFile::Open(dir / "types.gguf");
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  for (const char* name : {"t.Q4_1", "t.Q4_K", "t.Q6_K"}) {
    SCOPED_TRACE(name);
    const GgufTensorInfo* info = (*file)->FindTensor(name);
    ASSERT_NE(info, nullptr);
    const auto one = (*file)->TensorData(*info);
    const std::vector<float> ref = ToF32(**file, *info);
    // 300 copies of the 3 rows: large enough to be split over threads.
    const int64_t copies = 100;
    std::vector<std::byte> src;
    for (int64_t c = 0; c < copies; ++c) src.insert(src.end(), one.begin(), one.end());
    const int64_t rows = 3 * copies;
    std::vector<int64_t> order(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) order[static_cast<size_t>(r)] = rows - 1 - r;  // reversed
    std::vector<float> out(static_cast<size_t>(rows * info->ne[0]));
    DequantizeParams p;
    p.type = info->type;
    p.src = src;
    p.n_rows = rows;
    p.n_cols = info->ne[0];
    p.out_dtype = DType::kF32;
    p.dst = std::as_writable_bytes(std::span<float>(out));
    p.row_order = order;
    p.num_threads = 4;
    ASSERT_TRUE(Dequantize(p).ok());
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t src_row = (rows - 1 - r) % 3;
      ASSERT_EQ(0, std::memcmp(&out[static_cast<size_t>(r * p.n_cols)],
                               &ref[static_cast<size_t>(src_row * p.n_cols)],
                               static_cast<size_t>(p.n_cols) * 4))
          << "row " << r;
    }
  }
}

TEST(GgufDequantTest, RejectsBadParameters) {
  std::vector<std::byte> src(84);  // one Q2_K block
  std::vector<float> dst(256);
  DequantizeParams p;
  p.type = GgmlType::kQ2_K;
  p.src = src;
  p.n_rows = 1;
  p.n_cols = 256;
  p.out_dtype = DType::kF32;
  p.dst = std::as_writable_bytes(std::span<float>(dst));
  Status s = Dequantize(p);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("Q2_K"), std::string::npos) << s.message();

  p.type = GgmlType::kQ8_0;  // 256 elements = 8 blocks of 34 bytes = 272 bytes, not 84
  s = Dequantize(p);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();

  std::vector<std::byte> q8(272);
  p.src = q8;
  EXPECT_TRUE(Dequantize(p).ok());
  p.n_cols = 100;  // not a multiple of 32
  s = Dequantize(p);
  EXPECT_NE(s.message().find("block size 32"), std::string::npos) << s.message();
  p.n_cols = 256;
  std::vector<int64_t> bad_order = {1};
  p.row_order = bad_order;
  s = Dequantize(p);
  EXPECT_NE(s.message().find("not in [0, 1)"), std::string::npos) << s.message();
  p.row_order = {};
  p.out_dtype = DType::kF16;
  s = Dequantize(p);
  EXPECT_NE(s.message().find("F32 or BF16"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace tandem
