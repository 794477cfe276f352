#include "tokenizer/jinja/predicates.h"

#include <cmath>

#include "tokenizer/jinja/interpreter.h"
#include "tokenizer/jinja/operators.h"
#include "tokenizer/jinja/py_text.h"

namespace tandem::jinja {
namespace {

const Value& Arg(const CallArgs& args, const std::string& test, std::string_view name) {
  const Value* v = args.Find(0, name);
  if (v == nullptr) ThrowTypeError("test '" + test + "' needs an argument");
  return *v;
}

}  // namespace

bool ApplyTest(Interpreter& interpreter, const std::string& name, const Value& v, CallArgs& args) {
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.is_bool();
  if (name == "false") return v.is_bool() && !v.as_bool();
  if (name == "true") return v.is_bool() && v.as_bool();
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "number") return v.is_number();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "sequence") return v.is_string() || v.is_sequence() || v.is_dict();
  if (name == "iterable") return v.is_string() || v.is_sequence() || v.is_dict() || v.is_undefined();
  if (name == "callable") return v.is_callable();
  if (name == "escaped") return false;
  if (name == "odd" || name == "even") {
    int64_t n = ToInt(v, "test '" + name + "'");
    return (n % 2 != 0) == (name == "odd");
  }
  if (name == "divisibleby") {
    int64_t n = ToInt(v, "divisibleby");
    int64_t d = ToInt(Arg(args, name, "num"), "divisibleby");
    if (d == 0) ThrowTypeError("integer division or modulo by zero");
    return n % d == 0;
  }
  if (name == "lower") return v.is_string() && py::Lower(v.as_string()) == v.as_string();
  if (name == "upper") return v.is_string() && py::Upper(v.as_string()) == v.as_string();
  if (name == "sameas") {
    const Value& other = Arg(args, name, "other");
    if (v.kind() != other.kind()) return false;
    if (v.is_none() || v.is_undefined()) return true;
    if (v.is_bool() || v.is_int()) return v.as_int() == other.as_int();
    return Equals(v, other);
  }
  if (name == "eq" || name == "equalto" || name == "==") return Equals(v, Arg(args, name, "other"));
  if (name == "ne" || name == "!=") return !Equals(v, Arg(args, name, "other"));
  if (name == "lt" || name == "lessthan" || name == "<") return LessThan(v, Arg(args, name, "other"));
  if (name == "gt" || name == "greaterthan" || name == ">") return LessThan(Arg(args, name, "other"), v);
  if (name == "le" || name == "<=") {
    const Value& o = Arg(args, name, "other");
    return LessThan(v, o) || Equals(v, o);
  }
  if (name == "ge" || name == ">=") {
    const Value& o = Arg(args, name, "other");
    return LessThan(o, v) || Equals(v, o);
  }
  if (name == "in") return Contains(Arg(args, name, "seq"), v);
  (void)interpreter;
  throw TemplateError(ErrorKind::kSyntax, "no test named '" + name + "'");
}

}  // namespace tandem::jinja
