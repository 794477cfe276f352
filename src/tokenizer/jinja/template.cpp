#include "tokenizer/jinja/template.h"

#include <exception>

#include "tokenizer/jinja/interpreter.h"
#include "tokenizer/jinja/lexer.h"
#include "tokenizer/jinja/parser.h"

namespace tandem::jinja {
namespace {

Status ToStatus(const TemplateError& e, std::string_view phase) {
  std::string where = e.line() > 0 ? " at line " + std::to_string(e.line()) : "";
  switch (e.kind()) {
    case ErrorKind::kSyntax:
      return InvalidArgumentError("template syntax error" + where + ": " + e.what());
    case ErrorKind::kRaised:
      return InvalidArgumentError(std::string("template raised an exception") + where + ": " + e.what());
    case ErrorKind::kLimit:
      return ResourceExhaustedError(std::string(phase) + where + " exceeded a limit: " + e.what());
    case ErrorKind::kUndefined:
      return InvalidArgumentError(std::string(phase) + where + ": undefined value: " + e.what());
    case ErrorKind::kSecurity:
      return InvalidArgumentError(std::string(phase) + where + ": forbidden by the sandbox: " + e.what());
    case ErrorKind::kType:
      break;
  }
  return InvalidArgumentError(std::string(phase) + where + ": " + e.what());
}

}  // namespace

StatusOr<Template> Template::Parse(std::string_view source) {
  TANDEM_ASSIGN_OR_RETURN(std::vector<Token> tokens, Tokenize(source));
  try {
    return Template(std::make_shared<const StmtList>(ParseTokens(tokens)));
  } catch (const TemplateError& e) {
    return ToStatus(e, "parsing the template");
  } catch (const std::exception& e) {
    return InternalError(std::string("parsing the template: ") + e.what());
  }
}

StatusOr<std::string> Template::Render(const ValueDict& context, const RenderLimits& limits) const {
  try {
    Interpreter interpreter(limits, context);
    return interpreter.Run(*body_);
  } catch (const TemplateError& e) {
    return ToStatus(e, "rendering the template");
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError("rendering the template ran out of memory");
  } catch (const std::exception& e) {
    return InternalError(std::string("rendering the template: ") + e.what());
  }
}

}  // namespace tandem::jinja
