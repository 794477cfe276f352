#include "tokenizer/jinja/interpreter.h"

#include <ctime>

#include "tokenizer/jinja/filters.h"
#include "tokenizer/jinja/operators.h"
#include "tokenizer/jinja/predicates.h"

namespace tandem::jinja {

Interpreter::Interpreter(const RenderLimits& limits, const ValueDict& context) : limits_(limits) {
  root_ = std::make_shared<Frame>();
  for (const auto& [key, value] : context.entries()) {
    if (key.is_string()) root_->vars[key.as_string()] = value;
  }
  InstallGlobals();
}

void Interpreter::Step(int64_t units) {
  steps_ += units;
  if (steps_ > limits_.max_steps) {
    throw TemplateError(ErrorKind::kLimit, "the template ran more than " + std::to_string(limits_.max_steps) +
                                               " steps (an endless or very long loop?)");
  }
}

std::string Interpreter::Run(const StmtList& body) {
  std::string out;
  out_ = &out;
  auto top = std::make_shared<Frame>();
  top->parent = root_;
  frame_ = top;
  ExecBody(body);
  out_ = nullptr;
  frame_.reset();
  return out;
}

void Interpreter::Write(const std::string& text) {
  output_bytes_ += text.size();
  if (output_bytes_ > limits_.max_output_bytes) {
    throw TemplateError(ErrorKind::kLimit, "the output grew over " + std::to_string(limits_.max_output_bytes) + " bytes");
  }
  out_->append(text);
}

Value Interpreter::Lookup(const std::string& name) const {
  for (const Frame* f = frame_.get(); f != nullptr; f = f->parent.get()) {
    auto it = f->vars.find(name);
    if (it != f->vars.end()) return it->second;
  }
  auto it = globals_.find(name);
  if (it != globals_.end()) return it->second;
  return Value::Undefined("'" + name + "' is undefined");
}

void Interpreter::Assign(const std::string& name, Value value) { frame_->vars[name] = std::move(value); }

Interpreter::Flow Interpreter::ExecBody(const StmtList& body) {
  for (const StmtPtr& stmt : body) {
    Flow flow = Exec(*stmt);
    if (flow != Flow::kNormal) return flow;
  }
  return Flow::kNormal;
}

std::string Interpreter::Capture(const StmtList& body, std::shared_ptr<Frame> frame) {
  std::string buffer;
  std::string* saved_out = out_;
  std::shared_ptr<Frame> saved_frame = frame_;
  out_ = &buffer;
  frame_ = std::move(frame);
  try {
    ExecBody(body);
  } catch (...) {
    out_ = saved_out;
    frame_ = saved_frame;
    throw;
  }
  out_ = saved_out;
  frame_ = saved_frame;
  return buffer;
}

Interpreter::Flow Interpreter::Exec(const Stmt& stmt) {
  Step();
  try {
    switch (stmt.kind) {
      case StmtKind::kData:
        Write(stmt.text);
        break;
      case StmtKind::kPrint:
        Write(Eval(*stmt.expr).Str());
        break;
      case StmtKind::kIf:
        return ExecBody(Eval(*stmt.expr).Truthy() ? stmt.body : stmt.else_body);
      case StmtKind::kFor:
        ExecFor(stmt);
        break;
      case StmtKind::kSet:
        ExecSet(stmt, Eval(*stmt.expr));
        break;
      case StmtKind::kSetBlock: {
        auto frame = std::make_shared<Frame>();
        frame->parent = frame_;
        Value value = Value::String(Capture(stmt.body, frame));
        if (stmt.condition) {
          filter_block_input_.push_back(value);
          value = Eval(*stmt.condition);
          filter_block_input_.pop_back();
        }
        Assign(stmt.targets[0], std::move(value));
        break;
      }
      case StmtKind::kMacro:
        Assign(stmt.text, MakeMacro(stmt, stmt.text));
        break;
      case StmtKind::kCallBlock: {
        Value caller = MakeMacro(stmt, "caller");
        CallArgs args;
        EvalArgs(*stmt.expr, 1, &args);
        args.keyword.emplace_back("caller", caller);
        Write(CallValue(Eval(*stmt.expr->children[0]), args).Str());
        break;
      }
      case StmtKind::kFilterBlock: {
        auto frame = std::make_shared<Frame>();
        frame->parent = frame_;
        filter_block_input_.push_back(Value::String(Capture(stmt.body, frame)));
        Value value = Eval(*stmt.expr);
        filter_block_input_.pop_back();
        Write(value.Str());
        break;
      }
      case StmtKind::kBreak:
        return Flow::kBreak;
      case StmtKind::kContinue:
        return Flow::kContinue;
      case StmtKind::kBody:
        return ExecBody(stmt.body);
    }
  } catch (TemplateError& e) {
    if (e.line() == 0) e.set_line(stmt.line);
    throw;
  }
  return Flow::kNormal;
}

void Interpreter::ExecSet(const Stmt& stmt, Value value) {
  if (!stmt.attribute.empty()) {
    Value target = Lookup(stmt.targets[0]);
    if (!target.is_object() || target.object().type_name != "Namespace") {
      ThrowTypeError("can only set attributes on namespace objects, and '" + stmt.targets[0] + "' is " +
                     (target.is_undefined() ? std::string("undefined") : "a " + target.TypeName()));
    }
    target.mutable_object().attrs->Set(Value::String(stmt.attribute), std::move(value));
    return;
  }
  if (stmt.targets.size() == 1) {
    Assign(stmt.targets[0], std::move(value));
    return;
  }
  ValueList items = Iterate(value);
  if (items.size() != stmt.targets.size()) {
    ThrowTypeError((items.size() > stmt.targets.size() ? "too many" : "not enough") +
                   std::string(" values to unpack (expected ") + std::to_string(stmt.targets.size()) + ", got " +
                   std::to_string(items.size()) + ")");
  }
  for (size_t i = 0; i < items.size(); ++i) Assign(stmt.targets[i], items[i]);
}

void Interpreter::ExecFor(const Stmt& stmt) {
  Value iterable = Eval(*stmt.expr);
  ValueList items = Iterate(iterable);
  Step(static_cast<int64_t>(items.size()));
  std::shared_ptr<Frame> outer = frame_;
  auto bind = [&](const std::shared_ptr<Frame>& frame, const Value& item) {
    if (stmt.targets.size() == 1) {
      frame->vars[stmt.targets[0]] = item;
      return;
    }
    ValueList parts = Iterate(item);
    if (parts.size() != stmt.targets.size()) {
      ThrowTypeError((parts.size() > stmt.targets.size() ? "too many" : "not enough") +
                     std::string(" values to unpack (expected ") + std::to_string(stmt.targets.size()) + ", got " +
                     std::to_string(parts.size()) + ")");
    }
    for (size_t i = 0; i < parts.size(); ++i) frame->vars[stmt.targets[i]] = parts[i];
  };
  if (stmt.condition) {
    ValueList kept;
    for (const Value& item : items) {
      auto frame = std::make_shared<Frame>();
      frame->parent = outer;
      bind(frame, item);
      frame_ = frame;
      bool keep;
      try {
        keep = Eval(*stmt.condition).Truthy();
      } catch (...) {
        frame_ = outer;
        throw;
      }
      frame_ = outer;
      if (keep) kept.push_back(item);
    }
    items = std::move(kept);
  }
  if (items.empty()) {
    ExecBody(stmt.else_body);
    return;
  }
  const int64_t n = static_cast<int64_t>(items.size());
  try {
    for (int64_t i = 0; i < n; ++i) {
      auto frame = std::make_shared<Frame>();
      frame->parent = outer;
      bind(frame, items[i]);
      ValueDict loop;
      loop.Set(Value::String("index"), Value::Int(i + 1));
      loop.Set(Value::String("index0"), Value::Int(i));
      loop.Set(Value::String("revindex"), Value::Int(n - i));
      loop.Set(Value::String("revindex0"), Value::Int(n - i - 1));
      loop.Set(Value::String("first"), Value::Bool(i == 0));
      loop.Set(Value::String("last"), Value::Bool(i == n - 1));
      loop.Set(Value::String("length"), Value::Int(n));
      loop.Set(Value::String("depth"), Value::Int(1));
      loop.Set(Value::String("depth0"), Value::Int(0));
      loop.Set(Value::String("previtem"),
               i > 0 ? items[i - 1] : Value::Undefined("there is no previous item"));
      loop.Set(Value::String("nextitem"),
               i + 1 < n ? items[i + 1] : Value::Undefined("there is no next item"));
      loop.Set(Value::String("cycle"), Value::Function("loop.cycle", [i](CallArgs& args) {
                 if (args.positional.empty()) ThrowTypeError("no items for cycling given");
                 return args.positional[static_cast<size_t>(i) % args.positional.size()];
               }));
      frame->vars["loop"] = Value::Object("LoopContext", std::move(loop));
      frame_ = frame;
      Flow flow = ExecBody(stmt.body);
      frame_ = outer;
      if (flow == Flow::kBreak) break;
    }
  } catch (...) {
    frame_ = outer;
    throw;
  }
}

Value Interpreter::MakeMacro(const Stmt& stmt, const std::string& name) {
  std::weak_ptr<Frame> closure = frame_;
  const Stmt* def = &stmt;
  return Value::Function(name, [this, def, name, closure](CallArgs& args) {
    return InvokeMacro(*def, name, closure, args);
  });
}

Value Interpreter::InvokeMacro(const Stmt& stmt, const std::string& name, const std::weak_ptr<Frame>& closure,
                               CallArgs& args) {
  if (call_depth_ >= limits_.max_call_depth) {
    throw TemplateError(ErrorKind::kLimit, "macro '" + name + "' nested deeper than " +
                                               std::to_string(limits_.max_call_depth) + " calls (endless recursion?)");
  }
  auto frame = std::make_shared<Frame>();
  std::shared_ptr<Frame> parent = closure.lock();
  frame->parent = parent ? parent : root_;
  ValueList varargs;
  for (size_t i = 0; i < args.positional.size(); ++i) {
    if (i < stmt.params.size()) {
      frame->vars[stmt.params[i].name] = args.positional[i];
    } else {
      varargs.push_back(args.positional[i]);
    }
  }
  ValueDict kwargs;
  for (auto& [key, value] : args.keyword) {
    bool is_param = false;
    for (const MacroParam& p : stmt.params) is_param = is_param || p.name == key;
    if (is_param) {
      frame->vars[key] = value;
    } else if (key == "caller") {
      frame->vars["caller"] = value;
    } else {
      kwargs.Set(Value::String(key), value);
    }
  }
  frame->vars["varargs"] = Value::Tuple(std::move(varargs));
  frame->vars["kwargs"] = Value::Dict(std::move(kwargs));
  ++call_depth_;
  struct DepthRestore {
    int* depth;
    ~DepthRestore() { --*depth; }
  } restore{&call_depth_};
  std::shared_ptr<Frame> saved = frame_;
  frame_ = frame;
  try {
    for (const MacroParam& p : stmt.params) {
      if (frame->vars.count(p.name)) continue;
      frame->vars[p.name] = p.default_value ? Eval(*p.default_value)
                                            : Value::Undefined("parameter '" + p.name + "' was not provided");
    }
  } catch (...) {
    frame_ = saved;
    throw;
  }
  frame_ = saved;
  return Value::String(Capture(stmt.body, frame));
}

void Interpreter::EvalArgs(const Expr& expr, size_t first_child, CallArgs* args) {
  for (size_t i = first_child; i < expr.children.size(); ++i) args->positional.push_back(Eval(*expr.children[i]));
  for (const auto& [key, value] : expr.keywords) args->keyword.emplace_back(key, Eval(*value));
}

Value Interpreter::CallValue(const Value& callee, CallArgs& args) {
  if (callee.is_callable()) return callee.callable().fn(args);
  if (callee.is_undefined()) callee.ThrowUndefined();
  ThrowTypeError("'" + callee.TypeName() + "' object is not callable");
}

Value Interpreter::CallFilter(const std::string& name, const Value& input, CallArgs& args) {
  return ApplyFilter(*this, name, input, args);
}

bool Interpreter::CallTest(const std::string& name, const Value& input, CallArgs& args) {
  return ApplyTest(*this, name, input, args);
}

Value Interpreter::Eval(const Expr& e) {
  Step();
  switch (e.kind) {
    case ExprKind::kConst:
      return e.constant;
    case ExprKind::kName:
      return Lookup(e.name);
    case ExprKind::kList:
    case ExprKind::kTuple: {
      ValueList items;
      items.reserve(e.children.size());
      for (const ExprPtr& c : e.children) items.push_back(Eval(*c));
      return e.kind == ExprKind::kList ? Value::List(std::move(items)) : Value::Tuple(std::move(items));
    }
    case ExprKind::kDict: {
      ValueDict dict;
      for (size_t i = 0; i + 1 < e.children.size(); i += 2) {
        Value key = Eval(*e.children[i]);
        dict.Set(std::move(key), Eval(*e.children[i + 1]));
      }
      return Value::Dict(std::move(dict));
    }
    case ExprKind::kGetAttr:
      return GetAttr(Eval(*e.children[0]), e.name);
    case ExprKind::kGetItem: {
      Value obj = Eval(*e.children[0]);
      return GetItem(obj, Eval(*e.children[1]));
    }
    case ExprKind::kSlice: {
      Value obj = Eval(*e.children[0]);
      Value parts[3];
      const Value* ptrs[3] = {nullptr, nullptr, nullptr};
      for (int i = 0; i < 3; ++i) {
        if (e.children[i + 1]) {
          parts[i] = Eval(*e.children[i + 1]);
          ptrs[i] = &parts[i];
        }
      }
      return Slice(obj, ptrs[0], ptrs[1], ptrs[2]);
    }
    case ExprKind::kCall:
      return EvalCall(e);
    case ExprKind::kFilter: {
      Value input;
      if (e.children[0]) {
        input = Eval(*e.children[0]);
      } else {
        input = filter_block_input_.back();
      }
      CallArgs args;
      EvalArgs(e, 1, &args);
      return ApplyFilter(*this, e.name, input, args);
    }
    case ExprKind::kTest: {
      Value input = Eval(*e.children[0]);
      CallArgs args;
      EvalArgs(e, 1, &args);
      return Value::Bool(ApplyTest(*this, e.name, input, args) != e.negated);
    }
    case ExprKind::kNot:
      return Value::Bool(!Eval(*e.children[0]).Truthy());
    case ExprKind::kNeg:
      return Negate(Eval(*e.children[0]));
    case ExprKind::kPos: {
      Value v = Eval(*e.children[0]);
      if (v.is_undefined()) v.ThrowUndefined();
      if (!v.is_number()) ThrowTypeError("bad operand type for unary +: '" + v.TypeName() + "'");
      return v.is_bool() ? Value::Int(v.as_int()) : v;
    }
    case ExprKind::kBinary: {
      Value a = Eval(*e.children[0]);
      Value b = Eval(*e.children[1]);
      return BinaryOp(e.name, a, b, limits_);
    }
    case ExprKind::kAnd: {
      Value a = Eval(*e.children[0]);
      return a.Truthy() ? Eval(*e.children[1]) : a;
    }
    case ExprKind::kOr: {
      Value a = Eval(*e.children[0]);
      return a.Truthy() ? a : Eval(*e.children[1]);
    }
    case ExprKind::kCompare: {
      Value left = Eval(*e.children[0]);
      for (size_t i = 0; i < e.ops.size(); ++i) {
        Value right = Eval(*e.children[i + 1]);
        const std::string& op = e.ops[i];
        bool ok;
        if (op == "==") {
          ok = Equals(left, right);
        } else if (op == "!=") {
          ok = !Equals(left, right);
        } else if (op == "<") {
          ok = LessThan(left, right);
        } else if (op == ">") {
          ok = LessThan(right, left);
        } else if (op == "<=") {
          ok = LessThan(left, right) || Equals(left, right);
        } else if (op == ">=") {
          ok = LessThan(right, left) || Equals(left, right);
        } else if (op == "in") {
          ok = Contains(right, left);
        } else {
          ok = !Contains(right, left);
        }
        if (!ok) return Value::Bool(false);
        left = std::move(right);
      }
      return Value::Bool(true);
    }
    case ExprKind::kCondExpr: {
      if (Eval(*e.children[0]).Truthy()) return Eval(*e.children[1]);
      if (e.children[2]) return Eval(*e.children[2]);
      return Value::Undefined("the inline if-expression on line " + std::to_string(e.line) +
                              " evaluated to false and no else section was defined.");
    }
  }
  return Value();
}

Value Interpreter::EvalCall(const Expr& e) {
  Value callee = Eval(*e.children[0]);
  CallArgs args;
  EvalArgs(e, 1, &args);
  return CallValue(callee, args);
}

void Interpreter::InstallGlobals() {
  globals_["range"] = Value::Function("range", [this](CallArgs& args) {
    args.CheckSignature("range", 3, {});
    if (args.positional.empty()) ThrowTypeError("range expected at least 1 argument, got 0");
    int64_t start = 0, stop, step = 1;
    if (args.positional.size() == 1) {
      stop = ToInt(args.positional[0], "range()");
    } else {
      start = ToInt(args.positional[0], "range()");
      stop = ToInt(args.positional[1], "range()");
      if (args.positional.size() == 3) step = ToInt(args.positional[2], "range()");
    }
    if (step == 0) ThrowTypeError("range() arg 3 must not be zero");
    __int128 span = step > 0 ? static_cast<__int128>(stop) - start : static_cast<__int128>(start) - stop;
    __int128 abs_step = step > 0 ? step : -static_cast<__int128>(step);
    __int128 count = span <= 0 ? 0 : (span + abs_step - 1) / abs_step;
    if (count > limits_.max_range) {
      throw TemplateError(ErrorKind::kLimit, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (" +
                                                 std::to_string(limits_.max_range) + ").");
    }
    Step(static_cast<int64_t>(count));
    ValueList items;
    items.reserve(static_cast<size_t>(count));
    for (int64_t i = 0, v = start; i < static_cast<int64_t>(count); ++i, v += step) items.push_back(Value::Int(v));
    return Value::List(std::move(items));
  });
  auto dict_from_args = [](CallArgs& args, const char* what) {
    ValueDict dict;
    if (args.positional.size() > 1) ThrowTypeError(std::string(what) + " expected at most 1 positional argument");
    if (!args.positional.empty()) {
      const Value& init = args.positional[0];
      if (!init.is_dict()) ThrowTypeError(std::string(what) + " positional argument must be a dict");
      for (const auto& [k, v] : init.dict().entries()) dict.Set(k, v);
    }
    for (auto& [key, value] : args.keyword) dict.Set(Value::String(key), value);
    return dict;
  };
  globals_["namespace"] = Value::Function("namespace", [dict_from_args](CallArgs& args) {
    return Value::Object("Namespace", dict_from_args(args, "namespace()"));
  });
  globals_["dict"] = Value::Function("dict", [dict_from_args](CallArgs& args) {
    return Value::Dict(dict_from_args(args, "dict()"));
  });
  globals_["raise_exception"] = Value::Function("raise_exception", [](CallArgs& args) -> Value {
    const Value* message = args.Find(0, "message");
    throw TemplateError(ErrorKind::kRaised, message ? message->Str() : std::string());
  });
  globals_["strftime_now"] = Value::Function("strftime_now", [](CallArgs& args) {
    const Value* format = args.Find(0, "format");
    if (format == nullptr || !format->is_string()) ThrowTypeError("strftime_now(format) takes a format string");
    std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    char buf[512];
    size_t n = std::strftime(buf, sizeof(buf), format->as_string().c_str(), &local);
    return Value::String(std::string(buf, n));
  });
  globals_["joiner"] = Value::Function("joiner", [](CallArgs& args) {
    const Value* sep = args.Find(0, "sep");
    std::string separator = sep ? sep->Str() : ", ";
    auto used = std::make_shared<bool>(false);
    return Value::Function("joiner", [separator, used](CallArgs&) {
      if (!*used) {
        *used = true;
        return Value::String("");
      }
      return Value::String(separator);
    });
  });
}

}  // namespace tandem::jinja
