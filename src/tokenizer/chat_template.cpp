#include "tokenizer/chat_template.h"

#include <fstream>
#include <sstream>

namespace tandem {
namespace {

StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError("cannot open chat template file '" + path + "'");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

StatusOr<std::string> TemplateFromTokenizerConfig(const std::string& text, const std::string& path) {
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return InvalidArgumentError("'" + path + "' is not a JSON object");
  }
  auto it = config.find("chat_template");
  if (it == config.end()) return InvalidArgumentError("'" + path + "' has no \"chat_template\"");
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    for (const auto& entry : *it) {
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string()) {
        return entry["template"].get<std::string>();
      }
    }
    return InvalidArgumentError("'" + path + "': \"chat_template\" is a list without an entry named \"default\"");
  }
  return InvalidArgumentError("'" + path + "': \"chat_template\" must be a string or a list of {name, template}");
}

}  // namespace

StatusOr<ChatTemplate> ChatTemplate::Parse(std::string source) {
  StatusOr<jinja::Template> parsed = jinja::Template::Parse(source);
  if (!parsed.ok()) return parsed.status().WithContext("chat template");
  return ChatTemplate(std::move(source), std::move(parsed).value());
}

StatusOr<ChatTemplate> ChatTemplate::FromFile(const std::string& path) {
  TANDEM_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  bool is_json = path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0;
  if (is_json) {
    TANDEM_ASSIGN_OR_RETURN(text, TemplateFromTokenizerConfig(text, path));
  }
  StatusOr<ChatTemplate> parsed = Parse(std::move(text));
  if (!parsed.ok()) return parsed.status().WithContext(path);
  return parsed;
}

StatusOr<std::string> ChatTemplate::Render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                           const nlohmann::ordered_json& tools,
                                           const nlohmann::ordered_json& kwargs, const std::string& bos_token,
                                           const std::string& eos_token) const {
  if (!messages.is_array()) return InvalidArgumentError("chat messages must be a JSON array");
  if (!kwargs.is_null() && !kwargs.is_object()) return InvalidArgumentError("chat template kwargs must be a JSON object");
  jinja::ValueDict context;
  try {
    context.Set(jinja::Value::String("messages"), jinja::Value::FromJson(messages));
    context.Set(jinja::Value::String("tools"), jinja::Value::FromJson(tools));
    context.Set(jinja::Value::String("documents"), jinja::Value::None());
    context.Set(jinja::Value::String("add_generation_prompt"), jinja::Value::Bool(add_generation_prompt));
    context.Set(jinja::Value::String("bos_token"), jinja::Value::String(bos_token));
    context.Set(jinja::Value::String("eos_token"), jinja::Value::String(eos_token));
    if (kwargs.is_object()) {
      for (auto it = kwargs.begin(); it != kwargs.end(); ++it) {
        context.Set(jinja::Value::String(it.key()), jinja::Value::FromJson(it.value()));
      }
    }
  } catch (const jinja::TemplateError& e) {
    return InvalidArgumentError(std::string("chat template input: ") + e.what());
  }
  StatusOr<std::string> rendered = template_.Render(context, limits_);
  if (!rendered.ok()) return rendered.status().WithContext("chat template");
  return rendered;
}

StatusOr<std::string> ChatTemplate::Render(const nlohmann::json& messages, bool add_generation_prompt,
                                           const nlohmann::json& tools, const nlohmann::json& kwargs,
                                           const std::string& bos_token, const std::string& eos_token) const {
  // nlohmann::json keeps keys sorted; converting through text keeps that (documented) order.
  return Render(nlohmann::ordered_json::parse(messages.dump()), add_generation_prompt,
                nlohmann::ordered_json::parse(tools.dump()), nlohmann::ordered_json::parse(kwargs.dump()),
                bos_token, eos_token);
}

}  // namespace tandem
