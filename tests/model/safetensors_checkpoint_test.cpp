#include "model/safetensors_checkpoint.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "support/golden.h"
#include "support/testdata.h"

namespace tandem {
namespace {

using nlohmann::json;
using testing::ModelDir;
using testing::ScratchDir;

void WriteBytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string LengthPrefix(uint64_t n) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &n, 8);
  return s;
}

// A safetensors file from a header text and a data section, exactly as given.
void WriteSafetensors(const std::filesystem::path& path, const std::string& header,
                      const std::string& data) {
  WriteBytes(path, LengthPrefix(header.size()) + header + data);
}

struct TensorBytes {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

// A well-formed file holding `tensors` back to back (header padded to 8 bytes, as the reference
// writer does).
void WriteTensors(const std::filesystem::path& path, const std::vector<TensorBytes>& tensors,
                  const json& metadata = nullptr) {
  json header = json::object();
  std::string data;
  for (const auto& t : tensors) {
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  if (!metadata.is_null()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  while (text.size() % 8 != 0) text += ' ';
  WriteSafetensors(path, text, data);
}

template <typename T>
std::string Bytes(std::initializer_list<T> values) {
  std::string s(values.size() * sizeof(T), '\0');
  std::memcpy(s.data(), std::data(values), s.size());
  return s;
}

// Opening `header` + `data` fails with InvalidArgument naming the file and each of `needles`.
void ExpectOpenFails(const std::string& header, const std::string& data,
                     std::initializer_list<std::string> needles) {
  ScratchDir dir;
  const auto path = dir.path() / "bad.safetensors";
  WriteSafetensors(path, header, data);
  auto f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok()) << "opened unexpectedly: " << header;
  EXPECT_EQ(f.status().code(), StatusCode::kInvalidArgument) << f.status().ToString();
  EXPECT_NE(f.status().message().find(path.string()), std::string::npos) << f.status().ToString();
  for (const std::string& n : needles) {
    EXPECT_NE(f.status().message().find(n), std::string::npos)
        << "'" << n << "' not in: " << f.status().ToString();
  }
}

// --- valid files ---------------------------------------------------------------------------------

TEST(SafetensorsFileTest, ReadsEveryDtype) {
  ScratchDir dir;
  const auto path = dir.path() / "all.safetensors";
  const std::vector<TensorBytes> tensors = {
      {"f32", "F32", {2}, Bytes<float>({1.5f, -2.0f})},
      {"f16", "F16", {1}, Bytes<uint16_t>({0x3c00})},
      {"bf16", "BF16", {1, 1}, Bytes<uint16_t>({0x3f80})},
      {"f64", "F64", {1}, Bytes<double>({3.25})},
      {"i64", "I64", {2}, Bytes<int64_t>({-1, 1LL << 40})},
      {"i32", "I32", {1}, Bytes<int32_t>({-7})},
      {"i16", "I16", {1}, Bytes<int16_t>({-300})},
      {"i8", "I8", {3}, Bytes<int8_t>({-1, 0, 1})},
      {"u8", "U8", {2}, Bytes<uint8_t>({200, 7})},
      {"bool", "BOOL", {2}, Bytes<uint8_t>({1, 0})},
      {"scalar", "F32", {}, Bytes<float>({42.0f})},
      {"empty", "F32", {0, 4}, ""},
  };
  WriteTensors(path, tensors, json{{"format", "pt"}});
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->tensors().size(), tensors.size());
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  const DType expected[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI64,
                            DType::kI32, DType::kI16, DType::kI8,   DType::kU8,  DType::kBool,
                            DType::kF32, DType::kF32};
  for (size_t i = 0; i < tensors.size(); ++i) {
    SCOPED_TRACE(tensors[i].name);
    const SafetensorsTensorInfo* info = (*f)->Find(tensors[i].name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->dtype, expected[i]);
    EXPECT_EQ(DTypeName(info->dtype), tensors[i].dtype);
    EXPECT_EQ(info->shape, tensors[i].shape);
    HostTensor t = (*f)->View(*info);
    EXPECT_EQ(t.name, tensors[i].name);
    EXPECT_EQ(t.source, path.string());
    ASSERT_EQ(t.nbytes(), tensors[i].bytes.size());
    EXPECT_EQ(std::memcmp(t.data, tensors[i].bytes.data(), t.nbytes()), 0);
  }
  EXPECT_EQ((*f)->Find("absent"), nullptr);
}

TEST(SafetensorsFileTest, ViewOutlivesFile) {
  ScratchDir dir;
  const auto path = dir.path() / "x.safetensors";
  WriteTensors(path, {{"w", "I32", {3}, Bytes<int32_t>({4, 5, 6})}});
  HostTensor t;
  {
    auto f = SafetensorsFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    t = (*f)->View(*(*f)->Find("w"));
  }
  std::filesystem::remove(path);  // the mapping survives both the object and the file name
  int32_t v[3];
  std::memcpy(v, t.data, sizeof(v));
  EXPECT_EQ(v[0], 4);
  EXPECT_EQ(v[2], 6);
}

// --- malformed files: every one is a Status naming the file --------------------------------------

TEST(SafetensorsFileTest, TooShortFiles) {
  for (size_t size : {0, 1, 7}) {
    SCOPED_TRACE(size);
    ScratchDir dir;
    const auto path = dir.path() / "short.safetensors";
    WriteBytes(path, std::string(size, '\x01'));
    auto f = SafetensorsFile::Open(path);
    ASSERT_FALSE(f.ok());
    EXPECT_EQ(f.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(f.status().message().find(path.string()), std::string::npos) << f.status().ToString();
    EXPECT_NE(f.status().message().find("too short"), std::string::npos) << f.status().ToString();
  }
}

TEST(SafetensorsFileTest, HeaderLengthPastTheEnd) {
  for (uint64_t n : {uint64_t{3}, uint64_t{1000}, uint64_t{1} << 40, ~uint64_t{0}}) {
    SCOPED_TRACE(n);
    ScratchDir dir;
    const auto path = dir.path() / "h.safetensors";
    WriteBytes(path, LengthPrefix(n) + "{}");
    auto f = SafetensorsFile::Open(path);
    ASSERT_FALSE(f.ok());
    EXPECT_EQ(f.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(f.status().message().find(path.string()), std::string::npos) << f.status().ToString();
    EXPECT_NE(f.status().message().find("header length"), std::string::npos) << f.status().ToString();
  }
}

TEST(SafetensorsFileTest, HeaderLengthZero) { ExpectOpenFails("", "", {"header length 0"}); }

TEST(SafetensorsFileTest, MalformedJson) {
  ExpectOpenFails(R"({"w": {"dtype": "F32", )", "", {"malformed JSON"});
  ExpectOpenFails("\xff\xfe garbage", "", {"malformed JSON"});
  ExpectOpenFails(R"({"a": 1} trailing)", "", {"malformed JSON"});
}

TEST(SafetensorsFileTest, HeaderNotAnObject) {
  ExpectOpenFails(R"([1, 2, 3])", "", {"must be an object"});
}

TEST(SafetensorsFileTest, EntryNotAnObject) {
  ExpectOpenFails(R"({"w": 5})", "", {"tensor 'w'", "object"});
  ExpectOpenFails(R"({"w": [1, 2]})", "", {"tensor 'w'", "object"});
}

TEST(SafetensorsFileTest, UnknownDtype) {
  ExpectOpenFails(R"({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}})",
                  std::string(2, '\0'), {"tensor 'w'", "F8_E4M3", "BF16"});
  ExpectOpenFails(R"({"w": {"dtype": 4, "shape": [2], "data_offsets": [0, 8]}})",
                  std::string(8, '\0'), {"tensor 'w'", "dtype"});
}

TEST(SafetensorsFileTest, MissingFields) {
  ExpectOpenFails(R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", std::string(8, '\0'),
                  {"tensor 'w'", "dtype"});
  ExpectOpenFails(R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", std::string(8, '\0'),
                  {"tensor 'w'", "shape"});
  ExpectOpenFails(R"({"w": {"dtype": "F32", "shape": [2]}})", std::string(8, '\0'),
                  {"tensor 'w'", "data_offsets"});
  ExpectOpenFails(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})",
                  std::string(8, '\0'), {"tensor 'w'", "data_offsets"});
}

TEST(SafetensorsFileTest, BadDims) {
  ExpectOpenFails(R"({"w": {"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 8]}})",
                  std::string(8, '\0'), {"tensor 'w'", "non-negative"});
  ExpectOpenFails(R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}})",
                  std::string(8, '\0'), {"tensor 'w'", "non-negative"});
  ExpectOpenFails(R"({"w": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}})",
                  std::string(8, '\0'), {"tensor 'w'", "non-negative"});
  // numel overflows 64 bits
  ExpectOpenFails(
      R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 4], "data_offsets": [0, 8]}})",
      std::string(8, '\0'), {"tensor 'w'", "too large"});
}

TEST(SafetensorsFileTest, SizeMismatch) {
  ExpectOpenFails(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})",
                  std::string(8, '\0'), {"tensor 'w'", "8 bytes", "12 bytes"});
}

TEST(SafetensorsFileTest, OffsetsPastTheEnd) {
  ExpectOpenFails(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})",
                  std::string(8, '\0'), {"tensor 'w'", "past the end"});
  ExpectOpenFails(
      R"({"w": {"dtype": "U8", "shape": [1], "data_offsets": [18446744073709551615, 18446744073709551615]}})",
      std::string(8, '\0'), {"tensor 'w'"});
  ExpectOpenFails(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})",
                  std::string(8, '\0'), {"tensor 'w'", "non-negative"});
  ExpectOpenFails(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})",
                  std::string(8, '\0'), {"tensor 'w'", "begin is after end"});
}

TEST(SafetensorsFileTest, OverlappingTensors) {
  ExpectOpenFails(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                  std::string(12, '\0'), {"'a'", "'b'", "overlaps"});
  ExpectOpenFails(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
                  std::string(8, '\0'), {"'a'", "'b'", "overlaps"});
}

TEST(SafetensorsFileTest, DuplicateNames) {
  ExpectOpenFails(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                      "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                  std::string(8, '\0'), {"tensor 'a'", "more than once"});
}

TEST(SafetensorsFileTest, BadMetadata) {
  ExpectOpenFails(R"({"__metadata__": {"format": 1}})", "", {"__metadata__", "format"});
  ExpectOpenFails(R"({"__metadata__": [1]})", "", {"__metadata__"});
}

TEST(SafetensorsFileTest, MissingFileIsNotFound) {
  ScratchDir dir;
  auto f = SafetensorsFile::Open(dir.path() / "nope.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kNotFound);
  EXPECT_NE(f.status().message().find("nope.safetensors"), std::string::npos);
  auto d = SafetensorsFile::Open(dir.path());
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find(dir.path().string()), std::string::npos);
}

// --- checkpoints ---------------------------------------------------------------------------------

TEST(SafetensorsCheckpointTest, OpensTinyLlama) {
  auto ckpt = SafetensorsCheckpoint::Open(ModelDir("tiny-llama"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  EXPECT_TRUE((*ckpt)->Contains("model.embed_tokens.weight"));
  auto t = (*ckpt)->Get("model.embed_tokens.weight");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->dtype, DType::kBF16);
  EXPECT_EQ(t->shape.size(), 2u);
  EXPECT_NE(t->data, nullptr);
  auto missing = (*ckpt)->Get("no.such.tensor");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("no.such.tensor"), std::string::npos);
  EXPECT_NE(missing.status().message().find("model.safetensors"), std::string::npos);
  EXPECT_FALSE((*ckpt)->Contains("no.such.tensor"));
}

TEST(SafetensorsCheckpointTest, EmptyDirectoryIsNotFound) {
  ScratchDir dir;
  auto ckpt = SafetensorsCheckpoint::Open(dir.path());
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), StatusCode::kNotFound);
  EXPECT_NE(ckpt.status().message().find(dir.path().string()), std::string::npos);
  auto none = SafetensorsCheckpoint::Open(dir.path() / "missing");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), StatusCode::kNotFound);
}

// Splits tiny-llama31's tensors across two shards + an index in `dir`.
json WriteShardedCopy(const std::filesystem::path& dir) {
  auto single = SafetensorsFile::Open(ModelDir("tiny-llama31") / "model.safetensors");
  EXPECT_TRUE(single.ok()) << single.status().ToString();
  if (!single.ok()) return {};
  std::vector<TensorBytes> shards[2];
  json weight_map = json::object();
  size_t i = 0;
  for (const auto& info : (*single)->tensors()) {
    HostTensor t = (*single)->View(info);
    const int shard = (i++ % 2);
    shards[shard].push_back({info.name, std::string(DTypeName(info.dtype)), info.shape,
                             std::string(reinterpret_cast<const char*>(t.data), t.nbytes())});
    weight_map[info.name] = shard == 0 ? "model-00001-of-00002.safetensors"
                                       : "model-00002-of-00002.safetensors";
  }
  WriteTensors(dir / "model-00001-of-00002.safetensors", shards[0], json{{"format", "pt"}});
  WriteTensors(dir / "model-00002-of-00002.safetensors", shards[1], json{{"format", "pt"}});
  json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
  WriteBytes(dir / "model.safetensors.index.json", index.dump(2));
  return index;
}

TEST(SafetensorsCheckpointTest, ShardedLoadsSameBytesAsSingleFile) {
  ScratchDir dir;
  WriteShardedCopy(dir.path());
  auto single = SafetensorsCheckpoint::Open(ModelDir("tiny-llama31"));
  ASSERT_TRUE(single.ok()) << single.status().ToString();
  auto sharded = SafetensorsCheckpoint::Open(dir.path());
  ASSERT_TRUE(sharded.ok()) << sharded.status().ToString();
  EXPECT_EQ((*sharded)->files().size(), 2u);
  EXPECT_NE((*sharded)->Describe().find("2 shards"), std::string::npos) << (*sharded)->Describe();
  ASSERT_EQ((*single)->TensorNames(), (*sharded)->TensorNames());
  ASSERT_FALSE((*single)->TensorNames().empty());
  for (const std::string& name : (*single)->TensorNames()) {
    SCOPED_TRACE(name);
    auto a = (*single)->Get(name);
    auto b = (*sharded)->Get(name);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->dtype, b->dtype);
    EXPECT_EQ(a->shape, b->shape);
    ASSERT_EQ(a->nbytes(), b->nbytes());
    EXPECT_EQ(std::memcmp(a->data, b->data, a->nbytes()), 0);
  }
  auto missing = (*sharded)->Get("lm_head.bias");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("model.safetensors.index.json"), std::string::npos)
      << missing.status().ToString();
}

TEST(SafetensorsCheckpointTest, ShardMissingFromDisk) {
  ScratchDir dir;
  WriteShardedCopy(dir.path());
  std::filesystem::remove(dir.path() / "model-00002-of-00002.safetensors");
  auto ckpt = SafetensorsCheckpoint::Open(dir.path());
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(ckpt.status().message().find("model-00002-of-00002.safetensors"), std::string::npos)
      << ckpt.status().ToString();
  EXPECT_NE(ckpt.status().message().find("model.safetensors.index.json"), std::string::npos)
      << ckpt.status().ToString();
}

TEST(SafetensorsCheckpointTest, IndexNamesTensorAbsentFromShard) {
  ScratchDir dir;
  json index = WriteShardedCopy(dir.path());
  // Point the first shard-2 tensor at shard 1.
  std::string moved;
  for (auto& [name, shard] : index["weight_map"].items()) {
    if (shard == "model-00002-of-00002.safetensors") {
      moved = name;
      shard = "model-00001-of-00002.safetensors";
      break;
    }
  }
  ASSERT_FALSE(moved.empty());
  WriteBytes(dir.path() / "model.safetensors.index.json", index.dump());
  auto ckpt = SafetensorsCheckpoint::Open(dir.path());
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(ckpt.status().message().find("'" + moved + "'"), std::string::npos)
      << ckpt.status().ToString();
  EXPECT_NE(ckpt.status().message().find("model-00001-of-00002.safetensors"), std::string::npos)
      << ckpt.status().ToString();

  // A tensor the index invents.
  index = WriteShardedCopy(dir.path());
  index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors";
  WriteBytes(dir.path() / "model.safetensors.index.json", index.dump());
  ckpt = SafetensorsCheckpoint::Open(dir.path());
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(ckpt.status().message().find("model.layers.9.mlp.up_proj.weight"), std::string::npos)
      << ckpt.status().ToString();
}

TEST(SafetensorsCheckpointTest, BadIndex) {
  const std::pair<std::string, std::string> cases[] = {
      {"{not json", "malformed JSON"},
      {"[1]", "object"},
      {R"({"metadata": {}})", "weight_map"},
      {R"({"weight_map": {}})", "empty"},
      {R"({"weight_map": {"a": 3}})", "'a'"},
      {R"({"weight_map": {"a": "../other/model.safetensors"}})", "'a'"},
      {R"({"weight_map": {"a": "/etc/model.safetensors"}})", "'a'"},
  };
  for (const auto& [text, needle] : cases) {
    SCOPED_TRACE(text);
    ScratchDir dir;
    WriteBytes(dir.path() / "model.safetensors.index.json", text);
    auto ckpt = SafetensorsCheckpoint::Open(dir.path());
    ASSERT_FALSE(ckpt.ok());
    EXPECT_NE(ckpt.status().message().find("model.safetensors.index.json"), std::string::npos)
        << ckpt.status().ToString();
    EXPECT_NE(ckpt.status().message().find(needle), std::string::npos) << ckpt.status().ToString();
  }
}

TEST(SafetensorsCheckpointTest, CorruptShardNamesShardAndTensor) {
  ScratchDir dir;
  WriteShardedCopy(dir.path());
  // Truncate shard 1: its last tensor now runs past the end.
  const auto shard = dir.path() / "model-00001-of-00002.safetensors";
  std::filesystem::resize_file(shard, std::filesystem::file_size(shard) - 16);
  auto ckpt = SafetensorsCheckpoint::Open(dir.path());
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(ckpt.status().message().find(shard.string()), std::string::npos) << ckpt.status().ToString();
  EXPECT_NE(ckpt.status().message().find("tensor '"), std::string::npos) << ckpt.status().ToString();
}

// --- goldens helper ------------------------------------------------------------------------------

TEST(GoldensTest, LoadsTypedTensors) {
  testing::Goldens goldens("tiny-llama");
  ASSERT_TRUE(goldens.ok());
  EXPECT_GE(goldens.NumPrompts(), 1);
  auto ids = goldens.Int64("p2.input_ids");
  ASSERT_EQ(ids.shape.size(), 1u);
  EXPECT_EQ(ids.numel(), ids.shape[0]);
  auto logits = goldens.Float("p2.last_logits");
  ASSERT_EQ(logits.shape.size(), 1u);
  EXPECT_EQ(logits.numel(), logits.shape[0]);
  auto top = goldens.Float("p2.all_top16_values");
  ASSERT_EQ(top.shape.size(), 2u);
  EXPECT_EQ(static_cast<int64_t>(top.Row(0).size()), top.shape[1]);
}

TEST(GoldensTest, ConvertsToTheRequestedType) {
  ScratchDir dir;
  const auto path = dir.path() / "g.safetensors";
  WriteTensors(path, {{"i", "I32", {2}, Bytes<int32_t>({-3, 9})},
                      {"h", "BF16", {2}, Bytes<uint16_t>({0x3f80, 0xc000})}});
  auto g = testing::Goldens::FromFile(path);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g.Int64("i").values, (std::vector<int64_t>{-3, 9}));
  EXPECT_EQ(g.Float("h").values, (std::vector<float>{1.0f, -2.0f}));
  EXPECT_EQ(g.Names(), (std::vector<std::string>{"h", "i"}));
}

}  // namespace
}  // namespace tandem
