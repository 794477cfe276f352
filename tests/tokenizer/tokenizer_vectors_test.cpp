// HF `tokenizers` reference vectors (tokenizers.tar.gz): encode and decode must match exactly.
#include <gtest/gtest.h>

#include "tokenizer/incremental_decoder.h"
#include "tokenizer_test_support.h"

namespace tandem {
namespace {

using nlohmann::json;
using testing::ReadAll;
using testing::TokenizerData;

class VectorsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(VectorsTest, EncodeAndDecodeMatchHuggingFace) {
  const Tokenizer* tok = TokenizerData::Get().Load(GetParam());
  ASSERT_NE(tok, nullptr);
  std::ifstream in(TokenizerData::Get().dir() / GetParam() / "vectors.jsonl");
  ASSERT_TRUE(in) << "vectors.jsonl missing for " << GetParam();
  std::string line;
  int total = 0, encode_ok = 0, decode_ok = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    json v = json::parse(line);
    const std::string text = v["text"].get<std::string>();
    const std::vector<int32_t> expected = v["ids"].get<std::vector<int32_t>>();
    const std::string decoded = v["decoded"].get<std::string>();
    ++total;
    std::vector<int32_t> ids = tok->Encode(text);
    if (ids == expected) {
      ++encode_ok;
    } else {
      ADD_FAILURE() << GetParam() << " encode mismatch for " << json(text).dump();
    }
    if (tok->Decode(expected) == decoded) {
      ++decode_ok;
    } else {
      ADD_FAILURE() << GetParam() << " decode mismatch for " << json(text).dump() << ": got "
                    << json(tok->Decode(expected)).dump(-1, ' ', false, json::error_handler_t::replace);
    }
  }
  EXPECT_GT(total, 100);
  std::cout << "[ vectors  ] " << GetParam() << ": encode " << encode_ok << "/" << total
            << ", decode " << decode_ok << "/" << total << "\n";
}

INSTANTIATE_TEST_SUITE_P(Vocabularies, VectorsTest, ::testing::Values("gpt2", "llama3", "qwen2"));

struct LlamaCppCase {
  std::string vocab;      // llamacpp-vectors/ggml-vocab-<vocab>.gguf.*
  std::string tokenizer;  // the matching tokenizer.json folder
};

class LlamaCppVectorsTest : public ::testing::TestWithParam<LlamaCppCase> {};

TEST_P(LlamaCppVectorsTest, EncodeMatchesLlamaCpp) {
  const auto& param = GetParam();
  const Tokenizer* tok = TokenizerData::Get().Load(param.tokenizer);
  ASSERT_NE(tok, nullptr);
  const auto base = TokenizerData::Get().dir() / "llamacpp-vectors" / ("ggml-vocab-" + param.vocab + ".gguf");
  std::string inp = ReadAll(base.string() + ".inp");
  std::string out = ReadAll(base.string() + ".out");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> cases;
  size_t pos = 0;
  while (true) {
    size_t hit = inp.find(sep, pos);
    if (hit == std::string::npos) {
      cases.push_back(inp.substr(pos));
      break;
    }
    cases.push_back(inp.substr(pos, hit - pos));
    pos = hit + sep.size();
  }
  if (!cases.empty() && cases.back().empty()) cases.pop_back();
  std::istringstream lines(out);
  std::string line;
  int total = 0, ok = 0;
  for (const std::string& text : cases) {
    ASSERT_TRUE(std::getline(lines, line)) << "fewer .out lines than cases";
    std::vector<int32_t> expected;
    std::istringstream ids(line);
    int32_t id;
    while (ids >> id) expected.push_back(id);
    ++total;
    if (tok->Encode(text) == expected) {
      ++ok;
    } else {
      ADD_FAILURE() << param.vocab << " mismatch for " << json(text).dump();
    }
  }
  EXPECT_GT(total, 10);
  std::cout << "[ llamacpp ] " << param.vocab << ": " << ok << "/" << total << "\n";
}

INSTANTIATE_TEST_SUITE_P(Vocabularies, LlamaCppVectorsTest,
                         ::testing::Values(LlamaCppCase{"gpt-2", "gpt2"},
                                           LlamaCppCase{"llama-bpe", "llama3"},
                                           LlamaCppCase{"qwen2", "qwen2"}),
                         [](const auto& info) {
                           std::string n = info.param.tokenizer;
                           return n;
                         });

}  // namespace
}  // namespace tandem
