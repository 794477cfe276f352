// Interpreter: executes a parsed template against a context, with jinja2's scoping rules
// (each loop iteration and macro call gets its own frame; {% set %} writes the innermost frame;
// macros see the frame they were defined in) and the bounds of RenderLimits.
//
// One Interpreter renders one template once, on one thread. Errors are thrown as TemplateError
// and turned into a Status by Template::Render.
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/render_limits.h"
#include "tokenizer/jinja/value.h"

namespace tandem::jinja {

class Interpreter {
 public:
  Interpreter(const RenderLimits& limits, const ValueDict& context);
  Interpreter(const Interpreter&) = delete;
  Interpreter& operator=(const Interpreter&) = delete;

  // Renders `body`; throws TemplateError.
  std::string Run(const StmtList& body);

  // Used by filters and tests that take other filters/tests by name (map, select, ...).
  Value CallFilter(const std::string& name, const Value& input, CallArgs& args);
  bool CallTest(const std::string& name, const Value& input, CallArgs& args);
  Value CallValue(const Value& callee, CallArgs& args);
  const RenderLimits& limits() const { return limits_; }
  // Counts one unit of work; throws when the step budget is spent.
  void Step(int64_t units = 1);

 private:
  struct Frame {
    std::unordered_map<std::string, Value> vars;
    std::shared_ptr<Frame> parent;
  };
  enum class Flow { kNormal, kBreak, kContinue };

  Flow ExecBody(const StmtList& body);
  Flow Exec(const Stmt& stmt);
  void ExecFor(const Stmt& stmt);
  void ExecSet(const Stmt& stmt, Value value);
  Value Eval(const Expr& expr);
  Value EvalCall(const Expr& expr);
  void EvalArgs(const Expr& expr, size_t first_child, CallArgs* args);
  Value Lookup(const std::string& name) const;
  void Assign(const std::string& name, Value value);
  void Write(const std::string& text);
  // Renders `body` into a string in `frame` (macro calls, block set, filter blocks).
  std::string Capture(const StmtList& body, std::shared_ptr<Frame> frame);
  Value MakeMacro(const Stmt& stmt, const std::string& name);
  Value InvokeMacro(const Stmt& stmt, const std::string& name, const std::weak_ptr<Frame>& closure,
                    CallArgs& args);
  void InstallGlobals();

  RenderLimits limits_;
  std::unordered_map<std::string, Value> globals_;
  std::shared_ptr<Frame> root_;   // the render context
  std::shared_ptr<Frame> frame_;  // the innermost frame
  std::string* out_ = nullptr;
  size_t output_bytes_ = 0;
  int64_t steps_ = 0;
  int call_depth_ = 0;
  std::vector<Value> filter_block_input_;
};

}  // namespace tandem::jinja
