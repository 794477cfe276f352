// jinja::Template: a parsed Jinja template that renders like Hugging Face's chat-template
// environment (jinja2 ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols,
// raise_exception, strftime_now, HF's tojson). Immutable after Parse; Render is const and may be
// called from several threads at once.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "tandem/status.h"
#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/render_limits.h"
#include "tokenizer/jinja/value.h"

namespace tandem::jinja {

class Template {
 public:
  // InvalidArgument with the line and a description on a syntax error.
  static StatusOr<Template> Parse(std::string_view source);

  // Renders with `context` as the template's variables. Errors: InvalidArgument for template
  // errors (raise_exception, undefined access, type errors), ResourceExhausted when a limit is hit.
  StatusOr<std::string> Render(const ValueDict& context, const RenderLimits& limits = {}) const;

 private:
  explicit Template(std::shared_ptr<const StmtList> body) : body_(std::move(body)) {}
  std::shared_ptr<const StmtList> body_;
};

}  // namespace tandem::jinja
