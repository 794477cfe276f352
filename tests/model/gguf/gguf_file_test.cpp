// GgufFile: metadata of every value type as written by the official `gguf` package, versions 2
// and 3, and clear errors (naming the file) for corrupt and truncated files.
#include "model/gguf_file.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "gguf_test_util.h"

namespace tandem {
namespace {

using gguf_test::GeneratedDir;
using gguf_test::GgufBytes;
using gguf_test::ReadBytes;
using gguf_test::ReadJson;
using gguf_test::WriteBytes;
using testing::ScratchDir;

constexpr uint32_t kF32 = 0;
constexpr uint32_t kQ8_0 = 8;

TEST(GgufFileTest, ReadsMetadataOfEveryValueType) {
  const auto dir = GeneratedDir();
  const nlohmann::json manifest = ReadJson(dir / "types.json");
  auto opened = GgufFile::Open(dir / "types.gguf");
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  const GgufFile& f = **opened;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.data_offset() % 32, 0u);
  EXPECT_EQ(f.tensors().size(), manifest["tensors"].size());

  for (const auto& [key, want] : manifest["metadata"].items()) {
    SCOPED_TRACE(key);
    const GgufValue* v = f.FindValue(key);
    ASSERT_NE(v, nullptr);
    const std::string type = want["type"];
    EXPECT_EQ(GgufValueTypeName(v->type), type);
    if (type == "string") {
      EXPECT_EQ(*f.GetString(key), want["value"].get<std::string>());
    } else if (type == "bool") {
      EXPECT_EQ(*f.GetBool(key), want["value"].get<bool>());
    } else if (type == "float32" || type == "float64") {
      EXPECT_EQ(*f.GetFloat(key), want["value"].get<double>());
    } else if (type == "uint64") {
      EXPECT_EQ(v->uint_value, want["value"].get<uint64_t>());
    } else if (type == "array") {
      const std::string element = want["element_type"];
      EXPECT_EQ(GgufValueTypeName(v->element_type), element);
      if (element == "string") {
        EXPECT_EQ(*f.GetStringArray(key), want["value"].get<std::vector<std::string>>());
      } else if (element == "array") {
        const auto nested = want["value"].get<std::vector<std::vector<int64_t>>>();
        ASSERT_EQ(v->elements.size(), nested.size());
        for (size_t i = 0; i < nested.size(); ++i) {
          ASSERT_EQ(v->elements[i].type, GgufValueType::kArray);
          ASSERT_EQ(v->elements[i].elements.size(), nested[i].size());
          for (size_t j = 0; j < nested[i].size(); ++j) {
            EXPECT_EQ(v->elements[i].elements[j].int_value, nested[i][j]);
          }
        }
      } else {
        EXPECT_EQ(*f.GetIntArray(key), want["value"].get<std::vector<int64_t>>());
      }
    } else {
      EXPECT_EQ(*f.GetInt(key), want["value"].get<int64_t>());
    }
  }
}

TEST(GgufFileTest, TypedGettersNameTheKey) {
  auto f = GgufFile::Open(GeneratedDir() / "types.gguf");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  auto missing = (*f)->GetInt("llama.block_count");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("'llama.block_count' is missing"), std::string::npos)
      << missing.status().message();
  EXPECT_NE(missing.status().message().find("types.gguf"), std::string::npos);
  auto wrong = (*f)->GetInt("test.string");
  EXPECT_EQ(wrong.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.status().message().find("got string"), std::string::npos)
      << wrong.status().message();
  EXPECT_FALSE((*f)->GetStringArray("test.int_array").ok());
  EXPECT_FALSE((*f)->GetBool("test.u8").ok());
  EXPECT_EQ(*(*f)->GetFloat("test.i32"), -2000000000.0);  // integers widen to float
}

TEST(GgufFileTest, ReadsVersion2) {
  ScratchDir scratch;
  std::string bytes = ReadBytes(GeneratedDir() / "types.gguf");
  bytes[4] = 2;  // v2 has the v3 layout (64-bit counts and lengths)
  WriteBytes(scratch.path() / "v2.gguf", bytes);
  auto f = GgufFile::Open(scratch.path() / "v2.gguf");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->version(), 2u);
  EXPECT_EQ((*f)->tensors().size(), 12u);
}

// Writes `bytes` and expects Open() to fail with a message naming the file and containing `what`.
void ExpectOpenError(const std::string& bytes, const std::string& what) {
  ScratchDir scratch;
  const auto path = scratch.path() / "corrupt.gguf";
  WriteBytes(path, bytes);
  auto f = GgufFile::Open(path);
  ASSERT_FALSE(f.ok()) << "opened a corrupt file; expected an error containing: " << what;
  EXPECT_NE(f.status().message().find(path.string()), std::string::npos) << f.status().message();
  EXPECT_NE(f.status().message().find(what), std::string::npos) << f.status().message();
}

// A valid file: one F32 [2, 32] tensor and one key, written by hand.
GgufBytes ValidPrefix() {
  GgufBytes b;
  b.Header(1, 1).KvString("general.architecture", "llama").TensorInfo("w", {32, 2}, kF32, 0);
  return b;
}

TEST(GgufFileTest, HandWrittenFileOpens) {
  GgufBytes b = ValidPrefix();
  b.PadTo(32).Zeros(256);
  ScratchDir scratch;
  WriteBytes(scratch.path() / "ok.gguf", b.str());
  auto f = GgufFile::Open(scratch.path() / "ok.gguf");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->tensors()[0].shape(), (std::vector<int64_t>{2, 32}));
  EXPECT_EQ((*f)->tensors()[0].nbytes, 256u);
}

TEST(GgufFileTest, MissingAndEmptyFiles) {
  ScratchDir scratch;
  auto missing = GgufFile::Open(scratch.path() / "nope.gguf");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("nope.gguf"), std::string::npos);
  ExpectOpenError("", "empty");
}

TEST(GgufFileTest, BadMagicAndVersions) {
  std::string bytes = ValidPrefix().PadTo(32).Zeros(256).str();
  std::string bad = bytes;
  bad[0] = 'X';
  ExpectOpenError(bad, "not a GGUF file");
  for (uint32_t version : {0u, 1u, 4u}) {
    GgufBytes b;
    b.Header(0, 0, version);
    ExpectOpenError(b.str(), "GGUF version " + std::to_string(version) + " is not supported");
  }
  GgufBytes big_endian;
  big_endian.Header(0, 0, 0x03000000u);
  ExpectOpenError(big_endian.str(), "big-endian");
}

TEST(GgufFileTest, EveryTruncationIsAnError) {
  // Every proper prefix of a real file (header, metadata, tensor infos, data) must fail cleanly.
  // (The writer pads the file after the last tensor; cutting only padding leaves a valid file.)
  const std::string bytes = ReadBytes(GeneratedDir() / "types.gguf");
  auto full = GgufFile::Open(GeneratedDir() / "types.gguf");
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  size_t end = 0;
  for (const GgufTensorInfo& t : (*full)->tensors()) {
    end = std::max<size_t>(end, (*full)->data_offset() + t.offset + t.nbytes);
  }
  ASSERT_GT(end, 1000u);
  ASSERT_LE(end, bytes.size());
  ScratchDir scratch;
  const auto path = scratch.path() / "cut.gguf";
  size_t failures = 0;
  for (size_t n = 0; n < end; n += (n < 64 || n + 40 > end ? 1 : 97)) {
    WriteBytes(path, bytes.substr(0, n));
    auto f = GgufFile::Open(path);
    if (!f.ok()) {
      ++failures;
      EXPECT_NE(f.status().message().find(path.string()), std::string::npos) << f.status().message();
    } else {
      ADD_FAILURE() << "a " << n << "-byte prefix of a " << bytes.size() << "-byte file opened";
    }
  }
  EXPECT_GT(failures, 250u);
}

TEST(GgufFileTest, TruncatedTensorData) {
  std::string bytes = ValidPrefix().PadTo(32).Zeros(256).str();
  ExpectOpenError(bytes.substr(0, bytes.size() - 1), "tensor 'w' data [0, 256) runs past the end");
}

TEST(GgufFileTest, AbsurdCountsAndLengths) {
  GgufBytes tensors;
  tensors.Header(uint64_t{1} << 60, 0).Zeros(64);
  ExpectOpenError(tensors.str(), "tensor count 1152921504606846976 cannot fit");
  GgufBytes kvs;
  kvs.Header(0, ~uint64_t{0}).Zeros(64);
  ExpectOpenError(kvs.str(), "metadata count 18446744073709551615 cannot fit");
  GgufBytes key;
  key.Header(0, 1).U64(uint64_t{1} << 62).Zeros(64);
  ExpectOpenError(key.str(), "length 4611686018427387904 of metadata key #0 runs past the end");
  GgufBytes str;
  str.Header(0, 1).Str("k").U32(8).U64(1000).Raw("abc");
  ExpectOpenError(str.str(), "of the value of metadata key 'k' runs past the end");
  GgufBytes array;
  array.Header(0, 1).Str("tokens").U32(9).U32(8).U64(uint64_t{1} << 40).Zeros(64);
  ExpectOpenError(array.str(), "metadata array 'tokens' claims 1099511627776 string elements");
  GgufBytes dims;
  dims.Header(1, 0).TensorInfo("w", {32, 1, 1, 1, 1}, kF32, 0).PadTo(32).Zeros(128);
  ExpectOpenError(dims.str(), "tensor 'w' has 5 dimensions");
  GgufBytes shape;
  shape.Header(1, 0).TensorInfo("w", {uint64_t{1} << 40, uint64_t{1} << 40}, kF32, 0).PadTo(32);
  ExpectOpenError(shape.str(), "tensor 'w' has an absurd shape");
  GgufBytes huge;
  huge.Header(1, 0).TensorInfo("w", {uint64_t{1} << 31, uint64_t{1} << 31}, kF32, 0).PadTo(32);
  ExpectOpenError(huge.str(), "tensor 'w' has an absurd size");
}

TEST(GgufFileTest, BadTypesAndValues) {
  GgufBytes value_type;
  value_type.Header(0, 1).Str("k").U32(13).U32(0);
  ExpectOpenError(value_type.str(), "metadata key 'k' has unknown value type 13");
  GgufBytes element_type;
  element_type.Header(0, 1).Str("k").U32(9).U32(99).U64(1).U32(0);
  ExpectOpenError(element_type.str(), "metadata array 'k' has unknown element type 99");
  GgufBytes boolean;
  boolean.Header(0, 1).Str("flag").U32(7).Raw(std::string(1, '\x02'));
  ExpectOpenError(boolean.str(), "metadata key 'flag' holds bool value 2");
  GgufBytes deep;
  deep.Header(0, 1).Str("deep");
  deep.U32(9);
  for (int i = 0; i < 10; ++i) deep.U32(9).U64(1);
  deep.U32(4).U64(1).U32(7);
  ExpectOpenError(deep.str(), "nests arrays deeper than 8 levels");
  GgufBytes tensor_type;
  tensor_type.Header(1, 0).TensorInfo("w", {32}, 77, 0).PadTo(32).Zeros(256);
  ExpectOpenError(tensor_type.str(), "tensor 'w' has unknown ggml type 77");
  GgufBytes block;
  block.Header(1, 0).TensorInfo("w", {48, 2}, kQ8_0, 0).PadTo(32).Zeros(256);
  ExpectOpenError(block.str(), "rows of 48 elements, not a multiple of the Q8_0 block size 32");
  GgufBytes duplicate_key;
  duplicate_key.Header(0, 2).KvU32("k", 1).KvU32("k", 2);
  ExpectOpenError(duplicate_key.str(), "metadata key 'k' appears twice");
  GgufBytes duplicate_tensor;
  duplicate_tensor.Header(2, 0).TensorInfo("w", {8}, kF32, 0).TensorInfo("w", {8}, kF32, 32)
      .PadTo(32).Zeros(64);
  ExpectOpenError(duplicate_tensor.str(), "tensor 'w' appears twice");
}

TEST(GgufFileTest, BadOffsetsAndAlignment) {
  GgufBytes past_end;
  past_end.Header(1, 0).TensorInfo("w", {8}, kF32, 1024).PadTo(32).Zeros(64);
  ExpectOpenError(past_end.str(), "tensor 'w' data [1024, 1056) runs past the end");
  GgufBytes wrapping;
  wrapping.Header(1, 0).TensorInfo("w", {8}, kF32, ~uint64_t{31}).PadTo(32).Zeros(64);
  ExpectOpenError(wrapping.str(), "runs past the end");
  GgufBytes misaligned;
  misaligned.Header(1, 0).TensorInfo("w", {8}, kF32, 4).PadTo(32).Zeros(64);
  ExpectOpenError(misaligned.str(), "starts at offset 4, not a multiple of the alignment 32");
  GgufBytes overlap;
  overlap.Header(2, 0).TensorInfo("a", {16}, kF32, 0).TensorInfo("b", {8}, kF32, 32)
      .PadTo(32).Zeros(128);
  ExpectOpenError(overlap.str(), "tensors 'a' and 'b' overlap");
  GgufBytes alignment;
  alignment.Header(0, 1).KvU32("general.alignment", 3);
  ExpectOpenError(alignment.str(), "'general.alignment' must be a power of two, got 3");
  GgufBytes alignment_type;
  alignment_type.Header(0, 1).KvString("general.alignment", "32");
  ExpectOpenError(alignment_type.str(), "'general.alignment' must be a uint32, got string");
  GgufBytes no_data;
  no_data.Header(1, 0).TensorInfo("w", {8}, kF32, 0);
  ExpectOpenError(no_data.str(), "data section would start at byte");
}

TEST(GgufFileTest, CustomAlignment) {
  GgufBytes b;
  b.Header(2, 1).KvU32("general.alignment", 64).TensorInfo("a", {8}, kF32, 0)
      .TensorInfo("b", {8}, kF32, 64).PadTo(64).Zeros(128);
  ScratchDir scratch;
  WriteBytes(scratch.path() / "a64.gguf", b.str());
  auto f = GgufFile::Open(scratch.path() / "a64.gguf");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->alignment(), 64u);
  EXPECT_EQ((*f)->data_offset() % 64, 0u);
  EXPECT_EQ((*f)->TensorData(*(*f)->FindTensor("b")).data() - (*f)->TensorData((*f)->tensors()[0]).data(), 64);
}

}  // namespace
}  // namespace tandem
