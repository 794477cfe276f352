// tandem chat-template: renders conversations through a model's chat template, one JSON line in,
// one JSON line out ({"rendered": ...} or {"error": ...}), the shape of the chat-templates
// cases.jsonl files.
#include <CLI/CLI.hpp>

#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "tokenizer/chat_template.h"

namespace tandem::cli {
namespace {

// Tokens named in the special tokens file; a missing name stays undefined in the template.
struct SpecialTokens {
  nlohmann::ordered_json tokens = nlohmann::ordered_json::object();
};

StatusOr<SpecialTokens> ReadSpecialTokens(const std::string& path) {
  SpecialTokens tokens;
  if (path.empty()) return tokens;
  std::ifstream in(path);
  if (!in) return NotFoundError("cannot open special tokens file '" + path + "'");
  std::stringstream buffer;
  buffer << in.rdbuf();
  auto json = nlohmann::ordered_json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) return InvalidArgumentError("'" + path + "' is not a JSON object");
  // Either a plain string or an AddedToken-like {"content": ...}.
  for (auto it = json.begin(); it != json.end(); ++it) {
    const auto& v = it.value();
    tokens.tokens[it.key()] = v.is_object() && v.contains("content") ? v["content"] : v;
  }
  return tokens;
}

int RunChatTemplate(const std::string& template_path, const std::string& special_tokens_path) {
  StatusOr<ChatTemplate> tmpl = ChatTemplate::FromFile(template_path);
  if (!tmpl.ok()) {
    std::cerr << "chat-template: " << tmpl.status().ToString() << "\n";
    return 1;
  }
  StatusOr<SpecialTokens> tokens = ReadSpecialTokens(special_tokens_path);
  if (!tokens.ok()) {
    std::cerr << "chat-template: " << tokens.status().ToString() << "\n";
    return 1;
  }
  std::string line;
  int line_number = 0;
  while (std::getline(std::cin, line)) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::ordered_json out;
    auto request = nlohmann::ordered_json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (request.is_discarded() || !request.is_object()) {
      out["error"] = "input line " + std::to_string(line_number) + " is not a JSON object";
    } else {
      // Special tokens go in first so that kwargs (which HF merges last) can override them.
      nlohmann::ordered_json kwargs = tokens->tokens;
      if (request.contains("kwargs") && request["kwargs"].is_object()) {
        for (auto it = request["kwargs"].begin(); it != request["kwargs"].end(); ++it) kwargs[it.key()] = it.value();
      }
      nlohmann::ordered_json messages = request.value("messages", nlohmann::ordered_json::array());
      nlohmann::ordered_json tools = request.contains("tools") ? request["tools"] : nlohmann::ordered_json();
      bool add_generation_prompt =
          request.contains("add_generation_prompt") && request["add_generation_prompt"].is_boolean() &&
          request["add_generation_prompt"].get<bool>();
      StatusOr<std::string> rendered = tmpl->Render(messages, add_generation_prompt, tools, kwargs, "", "");
      if (rendered.ok()) {
        out["rendered"] = *rendered;
      } else {
        out["error"] = rendered.status().message();
      }
    }
    std::cout << out.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
  }
  return 0;
}

}  // namespace

void AddChatTemplateCommand(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand("chat-template",
                                 "Render JSON-lines conversations ({messages, add_generation_prompt, tools, "
                                 "kwargs}) through a chat template");
  auto template_path = std::make_shared<std::string>();
  auto special_tokens_path = std::make_shared<std::string>();
  cmd->add_option("--template", *template_path, "A .jinja file or a tokenizer_config.json with chat_template")
      ->required();
  cmd->add_option("--special-tokens", *special_tokens_path,
                  "JSON with bos_token / eos_token passed to the template");
  cmd->callback([exit_code, template_path, special_tokens_path] {
    *exit_code = RunChatTemplate(*template_path, *special_tokens_path);
  });
}

}  // namespace tandem::cli
