// IncrementalDecoder over random id streams: streamed text == Decode(all), never a broken UTF-8
// sequence in any step.
#include <gtest/gtest.h>

#include <random>

#include "tokenizer/incremental_decoder.h"
#include "tokenizer/unicode.h"
#include "tokenizer_test_support.h"

namespace tandem {
namespace {

using testing::TokenizerData;

class IncrementalDecoderTest : public ::testing::TestWithParam<std::string> {};

TEST_P(IncrementalDecoderTest, StreamEqualsOneShotDecode) {
  const Tokenizer* tok = TokenizerData::Get().Load(GetParam());
  ASSERT_NE(tok, nullptr);
  std::mt19937 rng(1234);
  // Byte tokens (ids whose text is a partial UTF-8 sequence) appear often in real streams:
  // draw half of the ids from the first 512 ids, where the single bytes live.
  std::uniform_int_distribution<int32_t> any(0, tok->vocab_size() - 1), low(0, 511);
  std::uniform_int_distribution<int> length(1, 60);
  for (int round = 0; round < 300; ++round) {
    std::vector<int32_t> ids(length(rng));
    for (auto& id : ids) id = (rng() & 1) ? any(rng) : low(rng);
    const bool skip = round % 2 == 1;
    IncrementalDecoder dec(*tok, skip);
    std::string streamed;
    for (int32_t id : ids) {
      std::string piece = dec.Step(id);
      ASSERT_TRUE(unicode::IsValidUtf8(piece)) << "step emitted broken UTF-8";
      streamed += piece;
    }
    streamed += dec.Flush();
    ASSERT_EQ(streamed, tok->Decode(ids, skip)) << "round " << round;
  }
}

TEST_P(IncrementalDecoderTest, EncodedTextStreamsBack) {
  const Tokenizer* tok = TokenizerData::Get().Load(GetParam());
  ASSERT_NE(tok, nullptr);
  std::ifstream in(TokenizerData::Get().dir() / GetParam() / "vectors.jsonl");
  std::string line;
  int n = 0;
  while (std::getline(in, line) && n < 200) {
    auto v = nlohmann::json::parse(line);
    auto ids = v["ids"].get<std::vector<int32_t>>();
    IncrementalDecoder dec(*tok);
    std::string streamed;
    for (int32_t id : ids) streamed += dec.Step(id);
    streamed += dec.Flush();
    EXPECT_EQ(streamed, v["decoded"].get<std::string>());
    ++n;
  }
  EXPECT_GT(n, 100);
}

INSTANTIATE_TEST_SUITE_P(Vocabularies, IncrementalDecoderTest,
                         ::testing::Values("gpt2", "llama3", "qwen2"));

}  // namespace
}  // namespace tandem
