// GgufWeightSource, ModelConfigFromGguf and VocabSpecFromGguf on files written by the official
// `gguf` package: tiny-llama converted the way convert_hf_to_gguf.py does it (Q/K rows permuted)
// must load back equal, bit for bit, to the safetensors checkpoint.
#include "model/gguf_weight_source.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include "common/half.h"
#include "gguf_test_util.h"
#include "model/gguf_model_config.h"
#include "model/gguf_vocab.h"
#include "model/safetensors_checkpoint.h"

namespace tandem {
namespace {

using gguf_test::GeneratedDir;
using gguf_test::GgufBytes;
using gguf_test::ReadJson;
using gguf_test::WriteBytes;
using testing::ModelDir;
using testing::ScratchDir;

uint16_t U16At(const HostTensor& t, int64_t i) {
  uint16_t v;
  std::memcpy(&v, t.data + i * 2, 2);
  return v;
}
uint32_t U32At(const HostTensor& t, int64_t i) {
  uint32_t v;
  std::memcpy(&v, t.data + i * 4, 4);
  return v;
}
uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// Every element of `got` equals `want` (a bf16 checkpoint tensor), compared bit for bit in
// `got`'s dtype (bf16 -> f32 is exact).
void ExpectSameTensor(const HostTensor& got, const HostTensor& want) {
  ASSERT_EQ(got.shape, want.shape) << got.name;
  ASSERT_EQ(want.dtype, DType::kBF16) << want.name;
  if (got.dtype == DType::kBF16) {
    ASSERT_EQ(0, std::memcmp(got.data, want.data, want.nbytes())) << got.name;
    return;
  }
  ASSERT_EQ(got.dtype, DType::kF32) << got.name;
  for (int64_t i = 0; i < want.numel(); ++i) {
    ASSERT_EQ(U32At(got, i), Bits(Bf16ToF32(U16At(want, i)))) << got.name << " element " << i;
  }
}

struct Variant {
  const char* file;
  DType matrix_dtype;
};

TEST(GgufWeightSourceTest, TinyLlamaEqualsSafetensorsBitForBit) {
  auto checkpoint = SafetensorsCheckpoint::Open(ModelDir("tiny-llama"));
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().ToString();
  std::vector<std::string> want_names = (*checkpoint)->TensorNames();
  std::sort(want_names.begin(), want_names.end());
  for (Variant v : {Variant{"tiny-llama-bf16.gguf", DType::kBF16},
                    Variant{"tiny-llama-f32.gguf", DType::kF32},
                    Variant{"tiny-llama-f32.gguf", DType::kBF16}}) {
    SCOPED_TRACE(v.file);
    GgufWeightSourceOptions options;
    options.matrix_dtype = v.matrix_dtype;
    options.num_threads = 2;
    auto source = GgufWeightSource::Open(GeneratedDir() / v.file, options);
    ASSERT_TRUE(source.ok()) << source.status().ToString();
    std::vector<std::string> names = (*source)->TensorNames();
    std::sort(names.begin(), names.end());
    ASSERT_EQ(names, want_names);
    EXPECT_FALSE((*source)->Contains("lm_head.weight"));  // tied
    for (const std::string& name : names) {
      SCOPED_TRACE(name);
      auto got = (*source)->Get(name);
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      auto want = (*checkpoint)->Get(name);
      ASSERT_TRUE(want.ok()) << want.status().ToString();
      EXPECT_EQ(got->dtype, got->shape.size() == 1 ? DType::kF32 : v.matrix_dtype);
      ExpectSameTensor(*got, *want);
    }
  }
}

TEST(GgufWeightSourceTest, StoredQAndKRowsArePermuted) {
  // Control: the GGUF rows really are in llama.cpp's order, so the test above checks the undo.
  auto file = GgufFile::Open(GeneratedDir() / "tiny-llama-bf16.gguf");
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  auto checkpoint = SafetensorsCheckpoint::Open(ModelDir("tiny-llama"));
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().ToString();
  for (const char* pair : {"q", "k"}) {
    const std::string gguf_name = std::string("blk.0.attn_") + pair + ".weight";
    const GgufTensorInfo* info = (*file)->FindTensor(gguf_name);
    ASSERT_NE(info, nullptr);
    auto hf = (*checkpoint)->Get(std::string("model.layers.0.self_attn.") + pair + "_proj.weight");
    ASSERT_TRUE(hf.ok());
    ASSERT_EQ(info->nbytes, hf->nbytes());
    EXPECT_NE(0, std::memcmp((*file)->TensorData(*info).data(), hf->data, hf->nbytes())) << pair;
  }
}

TEST(GgufWeightSourceTest, UnpermuteRopeRowsIsAPermutationWithinHeads) {
  const std::vector<int64_t> order = UnpermuteRopeRows(12, 3);
  std::vector<int64_t> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 12; ++i) {
    EXPECT_EQ(sorted[static_cast<size_t>(i)], i);
    EXPECT_EQ(order[static_cast<size_t>(i)] / 4, i / 4) << "row " << i << " left its head";
  }
}

TEST(GgufWeightSourceTest, ConfigMatchesConfigJson) {
  auto file = GgufFile::Open(GeneratedDir() / "tiny-llama-bf16.gguf");
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  auto got = ModelConfigFromGguf(**file);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  auto want = LoadModelConfig(ModelDir("tiny-llama"));
  ASSERT_TRUE(want.ok()) << want.status().ToString();
  EXPECT_EQ(got->architecture, want->architecture);
  EXPECT_EQ(got->arch, want->arch);
  EXPECT_EQ(got->vocab_size, want->vocab_size);
  EXPECT_EQ(got->hidden_size, want->hidden_size);
  EXPECT_EQ(got->intermediate_size, want->intermediate_size);
  EXPECT_EQ(got->num_layers, want->num_layers);
  EXPECT_EQ(got->num_heads, want->num_heads);
  EXPECT_EQ(got->num_kv_heads, want->num_kv_heads);
  EXPECT_EQ(got->head_dim, want->head_dim);
  EXPECT_EQ(got->max_position_embeddings, want->max_position_embeddings);
  EXPECT_FLOAT_EQ(static_cast<float>(got->rms_norm_eps), static_cast<float>(want->rms_norm_eps));
  EXPECT_EQ(got->rope.type, want->rope.type);
  EXPECT_EQ(got->rope.theta, want->rope.theta);
  EXPECT_EQ(got->tie_word_embeddings, want->tie_word_embeddings);
  EXPECT_EQ(got->attention_bias, want->attention_bias);
  EXPECT_EQ(got->bos_token_id, want->bos_token_id);
  ASSERT_FALSE(got->eos_token_ids.empty());
  EXPECT_EQ(got->eos_token_ids[0], want->eos_token_ids[0]);
}

TEST(GgufWeightSourceTest, VocabSpecFromMetadata) {
  const nlohmann::json want = ReadJson(GeneratedDir() / "types.json")["vocab"];
  auto file = GgufFile::Open(GeneratedDir() / "types.gguf");
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  auto v = VocabSpecFromGguf(**file);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->model, want["model"].get<std::string>());
  EXPECT_EQ(v->pre, want["pre"].get<std::string>());
  EXPECT_EQ(v->tokens, want["tokens"].get<std::vector<std::string>>());
  EXPECT_EQ(v->merges, want["merges"].get<std::vector<std::string>>());
  const auto types = want["token_types"].get<std::vector<int>>();
  ASSERT_EQ(v->token_types.size(), types.size());
  for (size_t i = 0; i < types.size(); ++i) EXPECT_EQ(static_cast<int>(v->token_types[i]), types[i]);
  EXPECT_EQ(v->bos_id, want["bos"].get<int32_t>());
  EXPECT_EQ(v->eos_id, want["eos"].get<int32_t>());
  EXPECT_EQ(v->unknown_id, want["unk"].get<int32_t>());
  EXPECT_EQ(v->padding_id, want["pad"].get<int32_t>());
  EXPECT_EQ(v->add_bos, want["add_bos"].get<bool>());
  EXPECT_EQ(v->chat_template, want["chat_template"].get<std::string>());
}

TEST(GgufWeightSourceTest, ArchitectureOtherThanLlamaIsNamed) {
  auto file = GgufFile::Open(GeneratedDir() / "types.gguf");
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  auto config = ModelConfigFromGguf(**file);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("'tandem-test'"), std::string::npos)
      << config.status().message();
  EXPECT_NE(config.status().message().find("types.gguf"), std::string::npos);
  auto source = GgufWeightSource::Open(GeneratedDir() / "types.gguf");
  EXPECT_FALSE(source.ok());
}

TEST(GgufWeightSourceTest, HfNames) {
  EXPECT_EQ(GgufWeightSource::HfName("token_embd.weight"), "model.embed_tokens.weight");
  EXPECT_EQ(GgufWeightSource::HfName("output_norm.weight"), "model.norm.weight");
  EXPECT_EQ(GgufWeightSource::HfName("output.weight"), "lm_head.weight");
  EXPECT_EQ(GgufWeightSource::HfName("blk.12.attn_norm.weight"),
            "model.layers.12.input_layernorm.weight");
  EXPECT_EQ(GgufWeightSource::HfName("blk.3.attn_output.weight"),
            "model.layers.3.self_attn.o_proj.weight");
  EXPECT_EQ(GgufWeightSource::HfName("blk.0.ffn_norm.weight"),
            "model.layers.0.post_attention_layernorm.weight");
  EXPECT_EQ(GgufWeightSource::HfName("blk.0.ffn_gate.weight"), "model.layers.0.mlp.gate_proj.weight");
  EXPECT_EQ(GgufWeightSource::HfName("blk.0.attn_q.bias"), "model.layers.0.self_attn.q_proj.bias");
  EXPECT_EQ(GgufWeightSource::HfName("rope_freqs.weight"), std::nullopt);
  EXPECT_EQ(GgufWeightSource::HfName("blk.x.attn_q.weight"), std::nullopt);
  EXPECT_EQ(GgufWeightSource::HfName("blk.1.attn_qq.weight"), std::nullopt);
}

// A llama header with the given key/values and tensors; `edit` may change the metadata.
std::string LlamaFile(int kv_heads, uint32_t tensor_type, const char* arch = "llama") {
  GgufBytes b;
  const uint64_t n_tensors = 1;
  b.Header(n_tensors, 9)
      .KvString("general.architecture", arch)
      .KvU32("llama.block_count", 1)
      .KvU32("llama.embedding_length", 256)
      .KvU32("llama.feed_forward_length", 512)
      .KvU32("llama.attention.head_count", 4)
      .KvU32("llama.attention.head_count_kv", static_cast<uint32_t>(kv_heads))
      .KvU32("llama.context_length", 128)
      .KvU32("llama.vocab_size", 1000);
  b.Str("llama.attention.layer_norm_rms_epsilon").U32(6).Pod<float>(1e-5f);
  b.TensorInfo("blk.0.attn_q.weight", {256, 256}, tensor_type, 0).PadTo(32).Zeros(256 * 256 * 4);
  return b.str();
}

TEST(GgufWeightSourceTest, ConfigAndTensorTypeErrors) {
  ScratchDir scratch;
  const auto path = scratch.path() / "x.gguf";
  WriteBytes(path, LlamaFile(4, 0));
  auto ok = GgufWeightSource::Open(path);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ((*ok)->config().head_dim, 64);
  EXPECT_TRUE((*ok)->config().tie_word_embeddings);
  auto missing = (*ok)->Get("model.layers.0.self_attn.k_proj.weight");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(path.string()), std::string::npos);

  WriteBytes(path, LlamaFile(3, 0));
  auto kv = GgufWeightSource::Open(path);
  ASSERT_FALSE(kv.ok());
  EXPECT_NE(kv.status().message().find("'llama.attention.head_count_kv'"), std::string::npos)
      << kv.status().message();

  WriteBytes(path, LlamaFile(4, 10));  // Q2_K
  auto q2k = GgufWeightSource::Open(path);
  ASSERT_FALSE(q2k.ok());
  EXPECT_NE(q2k.status().message().find("'blk.0.attn_q.weight' is Q2_K"), std::string::npos)
      << q2k.status().message();

  WriteBytes(path, LlamaFile(4, 0, "qwen2"));
  auto arch = GgufWeightSource::Open(path);
  ASSERT_FALSE(arch.ok());
  EXPECT_NE(arch.status().message().find("'qwen2'"), std::string::npos) << arch.status().message();
}

}  // namespace
}  // namespace tandem
