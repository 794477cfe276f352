// ChatTemplate: renders a model's Jinja chat_template exactly as Hugging Face's
// apply_chat_template(..., tokenize=False) does (jinja2 sandbox, trim_blocks, lstrip_blocks,
// loopcontrols, raise_exception, strftime_now, HF's tojson).
//
// Immutable after Parse; Render is const and thread-safe. Template errors (syntax, undefined
// values, raise_exception) are InvalidArgument; a template that exceeds RenderLimits (endless
// loops, runaway output or recursion) is ResourceExhausted.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "tandem/status.h"
#include "tokenizer/jinja/render_limits.h"
#include "tokenizer/jinja/template.h"

namespace tandem {

class ChatTemplate {
 public:
  static StatusOr<ChatTemplate> Parse(std::string source);

  // Reads a `.jinja` file, or a tokenizer_config.json whose "chat_template" is a string or a list
  // of {name, template} (the one named "default" is taken).
  static StatusOr<ChatTemplate> FromFile(const std::string& path);

  // Variables passed to the template, as HF does: messages, tools (None when `tools` is null),
  // documents (None), add_generation_prompt, bos_token, eos_token (None when empty is not
  // wanted: pass JSON null in kwargs to override), then every entry of `kwargs`, which win.
  //
  // Pass ordered_json to keep the key order of tool schemas and messages as the client sent
  // them (what tojson prints); nlohmann::json sorts object keys.
  StatusOr<std::string> Render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                               const nlohmann::ordered_json& tools, const nlohmann::ordered_json& kwargs,
                               const std::string& bos_token, const std::string& eos_token) const;
  StatusOr<std::string> Render(const nlohmann::json& messages, bool add_generation_prompt,
                               const nlohmann::json& tools, const nlohmann::json& kwargs,
                               const std::string& bos_token, const std::string& eos_token) const;

  const std::string& source() const { return source_; }
  void set_limits(const jinja::RenderLimits& limits) { limits_ = limits; }

 private:
  ChatTemplate(std::string source, jinja::Template tmpl) : source_(std::move(source)), template_(std::move(tmpl)) {}

  std::string source_;
  jinja::Template template_;
  jinja::RenderLimits limits_;
};

}  // namespace tandem
