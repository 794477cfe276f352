// TemplateError: how the Jinja interpreter reports errors internally.
//
// The interpreter is a deep recursion over the template; errors unwind it as a TemplateError
// exception, which Template::Parse/Render catch and turn into a Status. No exception leaves the
// jinja module.
#pragma once

#include <stdexcept>
#include <string>

namespace tandem::jinja {

enum class ErrorKind {
  kSyntax,     // the template does not parse (jinja2 TemplateSyntaxError)
  kUndefined,  // operating on an undefined value (jinja2 UndefinedError)
  kType,       // Python TypeError / ValueError / ZeroDivisionError / OverflowError
  kSecurity,   // what jinja2's ImmutableSandboxedEnvironment forbids (list.append, ...)
  kRaised,     // the template called raise_exception(message)
  kLimit,      // a bound on steps, output, recursion or sizes was exceeded
};

class TemplateError : public std::runtime_error {
 public:
  TemplateError(ErrorKind kind, const std::string& message, int line = 0)
      : std::runtime_error(message), kind_(kind), line_(line) {}
  ErrorKind kind() const { return kind_; }
  int line() const { return line_; }
  void set_line(int line) { line_ = line; }

 private:
  ErrorKind kind_;
  int line_;
};

[[noreturn]] inline void ThrowTypeError(const std::string& message) {
  throw TemplateError(ErrorKind::kType, message);
}

}  // namespace tandem::jinja
