// Every conversation in testdata/chat-templates/*/cases.jsonl, rendered by HF transformers, must
// render byte-identically (or fail where HF failed).
#include "tokenizer/chat_template.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "support/testdata.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

std::string ReadText(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

TEST(ChatTemplateCasesTest, MatchesHuggingFaceRenders) {
  fs::path root = testing::TestdataDir() / "chat-templates";
  ASSERT_TRUE(fs::is_directory(root)) << root;
  int families = 0, rendered_ok = 0, errors_ok = 0, total = 0;
  for (const auto& entry : fs::directory_iterator(root)) {
    if (!entry.is_directory()) continue;
    fs::path dir = entry.path();
    fs::path template_path = fs::exists(dir / "chat_template.jinja") ? dir / "chat_template.jinja"
                                                                     : dir / "tokenizer_config.json";
    StatusOr<ChatTemplate> tmpl = ChatTemplate::FromFile(template_path.string());
    ASSERT_TRUE(tmpl.ok()) << tmpl.status().ToString();
    ++families;
    auto special = nlohmann::ordered_json::parse(ReadText(dir / "special_tokens.json"));
    std::istringstream cases(ReadText(dir / "cases.jsonl"));
    std::string line;
    int index = 0;
    while (std::getline(cases, line)) {
      if (line.empty()) continue;
      ++total;
      auto c = nlohmann::ordered_json::parse(line);
      nlohmann::ordered_json kwargs = special;
      for (auto it = c["kwargs"].begin(); it != c["kwargs"].end(); ++it) kwargs[it.key()] = it.value();
      StatusOr<std::string> rendered =
          tmpl->Render(c["messages"], c["add_generation_prompt"].get<bool>(), c["tools"], kwargs, "", "");
      SCOPED_TRACE(dir.filename().string() + " case " + std::to_string(index++));
      if (c.contains("rendered")) {
        ASSERT_TRUE(rendered.ok()) << rendered.status().ToString();
        EXPECT_EQ(*rendered, c["rendered"].get<std::string>());
        if (rendered.ok() && *rendered == c["rendered"].get<std::string>()) ++rendered_ok;
      } else {
        ASSERT_TRUE(c.contains("error"));
        ASSERT_FALSE(rendered.ok()) << "rendered instead of failing: " << *rendered;
        EXPECT_EQ(rendered.status().code(), StatusCode::kInvalidArgument);
        // HF reports "TemplateError: <message given to raise_exception>".
        std::string expected = c["error"].get<std::string>();
        std::string prefix = "TemplateError: ";
        if (expected.rfind(prefix, 0) == 0) expected = expected.substr(prefix.size());
        EXPECT_NE(rendered.status().message().find(expected), std::string::npos) << rendered.status().message();
        ++errors_ok;
      }
    }
  }
  EXPECT_GE(families, 6);
  EXPECT_EQ(rendered_ok + errors_ok, total);
  std::cout << "chat template cases: " << families << " families, " << rendered_ok << " rendered identically, "
            << errors_ok << " errors reproduced, of " << total << "\n";
}

TEST(ChatTemplateCasesTest, ReadsTokenizerConfigWithNamedTemplates) {
  testing::ScratchDir scratch;
  fs::path config = scratch.path() / "tokenizer_config.json";
  std::ofstream(config) << R"({"chat_template": [{"name": "tool_use", "template": "T"},
                                                  {"name": "default", "template": "{{ messages[0].content }}!"}]})";
  StatusOr<ChatTemplate> tmpl = ChatTemplate::FromFile(config.string());
  ASSERT_TRUE(tmpl.ok()) << tmpl.status().ToString();
  auto rendered = tmpl->Render(nlohmann::json::parse(R"([{"role": "user", "content": "hi"}])"), false,
                               nlohmann::json(), nlohmann::json::object(), "<s>", "</s>");
  ASSERT_TRUE(rendered.ok()) << rendered.status().ToString();
  EXPECT_EQ(*rendered, "hi!");

  std::ofstream(config) << R"({"chat_template": [{"name": "tool_use", "template": "T"}]})";
  EXPECT_EQ(ChatTemplate::FromFile(config.string()).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ChatTemplate::FromFile((scratch.path() / "missing.jinja").string()).status().code(),
            StatusCode::kNotFound);
}

TEST(ChatTemplateCasesTest, SyntaxErrorNamesTheLine) {
  StatusOr<ChatTemplate> tmpl = ChatTemplate::Parse("line one\n{% if x %}\n{{ y }");
  ASSERT_FALSE(tmpl.ok());
  EXPECT_EQ(tmpl.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(tmpl.status().message().find("line 3"), std::string::npos) << tmpl.status().message();
}

}  // namespace
}  // namespace tandem
