// The embedded default model's own chat template (GGUF tokenizer.chat_template) is the SmolLM2
// template of the shared references, and rendering every shared SmolLM2 conversation with the
// template taken from the GGUF gives HF's output byte for byte.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "model/gguf_file.h"
#include "model/gguf_vocab.h"
#include "support/testdata.h"
#include "tokenizer/chat_template.h"

namespace tandem {
namespace {

std::filesystem::path CachedDefaultModel() {
  constexpr const char* kModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf";
  const char* cache = std::getenv("TANDEM_CACHE");
  if (cache != nullptr && *cache != '\0') return std::filesystem::path(cache) / kModelFile;
  const char* home = std::getenv("HOME");
  return std::filesystem::path(home != nullptr ? home : "/root") / ".cache" / "tandem" / kModelFile;
}

std::string ReadFile(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(GgufChatTemplateTest, DefaultModelTemplateAgreesWithSharedSmolLM2Template) {
  const auto model = CachedDefaultModel();
  if (!std::filesystem::exists(model)) {
    GTEST_SKIP() << "default model not cached at " << model << " (scripts/fetch-default-model.sh)";
  }
  auto file = GgufFile::Open(model);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  auto spec = VocabSpecFromGguf(**file);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  ASSERT_FALSE(spec->chat_template.empty());

  const auto dir = testing::TestdataDir() / "chat-templates" / "smollm2-135m-instruct";
  EXPECT_EQ(spec->chat_template, ReadFile(dir / "chat_template.jinja"));

  auto tmpl = ChatTemplate::Parse(spec->chat_template);
  ASSERT_TRUE(tmpl.ok()) << tmpl.status().ToString();
  auto special = nlohmann::json::parse(ReadFile(dir / "special_tokens.json"));
  std::ifstream cases(dir / "cases.jsonl");
  std::string line;
  int rendered = 0;
  while (std::getline(cases, line)) {
    if (line.empty()) continue;
    auto c = nlohmann::ordered_json::parse(line);
    auto out = tmpl->Render(c["messages"], c.value("add_generation_prompt", false),
                            c.contains("tools") ? c["tools"] : nlohmann::ordered_json(),
                            c.contains("kwargs") && c["kwargs"].is_object() ? c["kwargs"]
                                                                           : nlohmann::ordered_json::object(),
                            special.value("bos_token", ""), special.value("eos_token", ""));
    if (c.contains("rendered")) {
      ASSERT_TRUE(out.ok()) << out.status().ToString();
      EXPECT_EQ(*out, c["rendered"].get<std::string>());
      ++rendered;
    } else {
      EXPECT_FALSE(out.ok()) << "expected an error: " << c["error"];
    }
  }
  EXPECT_GT(rendered, 0);
}

}  // namespace
}  // namespace tandem
