#include "tokenizer/jinja/operators.h"

#include <cmath>

#include "tokenizer/jinja/methods.h"
#include "tokenizer/jinja/py_format.h"
#include "tokenizer/jinja/py_text.h"

namespace tandem::jinja {
namespace {

// jinja2's object_type_repr: "dict object", "None".
std::string ObjectTypeRepr(const Value& v) {
  if (v.is_none()) return "None";
  return v.TypeName() + " object";
}

void CheckStringSize(size_t bytes, const RenderLimits& limits) {
  if (bytes > limits.max_output_bytes) {
    throw TemplateError(ErrorKind::kLimit, "a string would grow to " + std::to_string(bytes) +
                                               " bytes, over the limit of " +
                                               std::to_string(limits.max_output_bytes));
  }
}

void CheckListSize(size_t items, const RenderLimits& limits) {
  if (items > limits.max_list_items) {
    throw TemplateError(ErrorKind::kLimit, "a list would grow to " + std::to_string(items) +
                                               " items, over the limit of " +
                                               std::to_string(limits.max_list_items));
  }
}

[[noreturn]] void Unsupported(const std::string& op, const Value& a, const Value& b) {
  ThrowTypeError("unsupported operand type(s) for " + op + ": '" + a.TypeName() + "' and '" +
                 b.TypeName() + "'");
}

[[noreturn]] void Overflow() {
  throw TemplateError(ErrorKind::kType, "integer overflow: results beyond 64 bits are not supported");
}

Value Repeat(const Value& seq, int64_t times, const RenderLimits& limits) {
  if (times < 0) times = 0;
  if (seq.is_string()) {
    const std::string& s = seq.as_string();
    if (!s.empty()) CheckStringSize(s.size() * static_cast<size_t>(std::min<int64_t>(times, INT32_MAX)), limits);
    std::string out;
    out.reserve(s.size() * times);
    for (int64_t i = 0; i < times; ++i) out += s;
    return Value::String(std::move(out));
  }
  const ValueList& items = seq.items();
  if (!items.empty()) CheckListSize(items.size() * static_cast<size_t>(std::min<int64_t>(times, INT32_MAX)), limits);
  ValueList out;
  for (int64_t i = 0; i < times; ++i) out.insert(out.end(), items.begin(), items.end());
  return seq.is_tuple() ? Value::Tuple(std::move(out)) : Value::List(std::move(out));
}

int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

int64_t FloorMod(int64_t a, int64_t b) {
  int64_t r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}

double FloatMod(double a, double b) {
  double r = std::fmod(a, b);
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  if (r == 0) r = std::copysign(0.0, b);
  return r;
}

}  // namespace

int64_t ToInt(const Value& v, const std::string& what) {
  if (v.is_integral()) return v.as_int();
  if (v.is_float()) {
    double d = v.as_float();
    if (!std::isfinite(d) || std::fabs(d) > 9.2e18) ThrowTypeError(what + ": cannot convert float " + v.Repr() + " to integer");
    return static_cast<int64_t>(d);
  }
  if (v.is_undefined()) v.ThrowUndefined();
  ThrowTypeError(what + ": '" + v.TypeName() + "' object cannot be interpreted as an integer");
}

Value BinaryOp(const std::string& op, const Value& a, const Value& b, const RenderLimits& limits) {
  if (op == "~") {
    std::string s = a.Str();
    s += b.Str();
    CheckStringSize(s.size(), limits);
    return Value::String(std::move(s));
  }
  if (a.is_undefined()) a.ThrowUndefined();
  if (b.is_undefined()) b.ThrowUndefined();
  bool ints = a.is_integral() && b.is_integral();
  bool nums = a.is_number() && b.is_number();
  int64_t r = 0;
  if (op == "+") {
    if (ints) {
      if (__builtin_add_overflow(a.as_int(), b.as_int(), &r)) Overflow();
      return Value::Int(r);
    }
    if (nums) return Value::Float(a.as_float() + b.as_float());
    if (a.is_string() && b.is_string()) {
      CheckStringSize(a.as_string().size() + b.as_string().size(), limits);
      return Value::String(a.as_string() + b.as_string());
    }
    if ((a.is_list() && b.is_list()) || (a.is_tuple() && b.is_tuple())) {
      CheckListSize(a.items().size() + b.items().size(), limits);
      ValueList out = a.items();
      out.insert(out.end(), b.items().begin(), b.items().end());
      return a.is_tuple() ? Value::Tuple(std::move(out)) : Value::List(std::move(out));
    }
    if (a.is_string() || a.is_list() || a.is_tuple()) {
      ThrowTypeError("can only concatenate " + a.TypeName() + " (not \"" + b.TypeName() + "\") to " + a.TypeName());
    }
    Unsupported(op, a, b);
  }
  if (op == "-") {
    if (ints) {
      if (__builtin_sub_overflow(a.as_int(), b.as_int(), &r)) Overflow();
      return Value::Int(r);
    }
    if (nums) return Value::Float(a.as_float() - b.as_float());
    Unsupported(op, a, b);
  }
  if (op == "*") {
    if (ints) {
      if (__builtin_mul_overflow(a.as_int(), b.as_int(), &r)) Overflow();
      return Value::Int(r);
    }
    if (nums) return Value::Float(a.as_float() * b.as_float());
    if ((a.is_string() || a.is_sequence()) && b.is_integral()) return Repeat(a, b.as_int(), limits);
    if (a.is_integral() && (b.is_string() || b.is_sequence())) return Repeat(b, a.as_int(), limits);
    if (a.is_string() || a.is_sequence() || b.is_string() || b.is_sequence()) {
      ThrowTypeError("can't multiply sequence by non-int of type '" +
                     (a.is_number() || b.is_number() ? std::string("float") : b.TypeName()) + "'");
    }
    Unsupported(op, a, b);
  }
  if (op == "/") {
    if (!nums) Unsupported(op, a, b);
    if (b.as_float() == 0) ThrowTypeError("division by zero");
    return Value::Float(a.as_float() / b.as_float());
  }
  if (op == "//") {
    if (!nums) Unsupported(op, a, b);
    if (ints) {
      if (b.as_int() == 0) ThrowTypeError("integer division or modulo by zero");
      if (a.as_int() == INT64_MIN && b.as_int() == -1) Overflow();
      return Value::Int(FloorDiv(a.as_int(), b.as_int()));
    }
    if (b.as_float() == 0) ThrowTypeError("float floor division by zero");
    double x = a.as_float(), y = b.as_float();
    return Value::Float(std::floor(x / y));
  }
  if (op == "%") {
    if (a.is_string()) return Value::String(py::PercentFormat(a.as_string(), b));
    if (!nums) Unsupported(op, a, b);
    if (ints) {
      if (b.as_int() == 0) ThrowTypeError("integer division or modulo by zero");
      if (b.as_int() == -1) return Value::Int(0);
      return Value::Int(FloorMod(a.as_int(), b.as_int()));
    }
    if (b.as_float() == 0) ThrowTypeError("float modulo");
    return Value::Float(FloatMod(a.as_float(), b.as_float()));
  }
  if (op == "**") {
    if (!nums) Unsupported("** or pow()", a, b);
    if (ints && b.as_int() >= 0) {
      int64_t base = a.as_int(), exp = b.as_int(), result = 1;
      while (exp > 0) {
        if (exp & 1) {
          if (__builtin_mul_overflow(result, base, &result)) Overflow();
        }
        exp >>= 1;
        if (exp > 0 && __builtin_mul_overflow(base, base, &base)) Overflow();
      }
      return Value::Int(result);
    }
    if (a.as_float() == 0 && b.as_float() < 0) ThrowTypeError("0.0 cannot be raised to a negative power");
    return Value::Float(std::pow(a.as_float(), b.as_float()));
  }
  ThrowTypeError("unknown operator " + op);
}

Value Negate(const Value& a) {
  if (a.is_undefined()) a.ThrowUndefined();
  if (a.is_integral()) {
    if (a.as_int() == INT64_MIN) Overflow();
    return Value::Int(-a.as_int());
  }
  if (a.is_float()) return Value::Float(-a.as_float());
  ThrowTypeError("bad operand type for unary -: '" + a.TypeName() + "'");
}

bool Contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::kString:
      if (!item.is_string()) {
        if (item.is_undefined()) item.ThrowUndefined();
        ThrowTypeError("'in <string>' requires string as left operand, not " + item.TypeName());
      }
      return container.as_string().find(item.as_string()) != std::string::npos;
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      for (const Value& v : container.items()) {
        if (Equals(v, item)) return true;
      }
      return false;
    case Value::Kind::kDict:
      return container.dict().Find(item) != nullptr;
    case Value::Kind::kUndefined:
      return false;
    default:
      ThrowTypeError("argument of type '" + container.TypeName() + "' is not iterable");
  }
}

Value GetAttr(const Value& obj, const std::string& name) {
  if (obj.is_undefined()) obj.ThrowUndefined();
  if (obj.is_object()) {
    const Value* v = obj.object().attrs->Find(name);
    if (v != nullptr) return *v;
    return Value::Undefined("'" + obj.TypeName() + " object' has no attribute '" + name + "'");
  }
  std::optional<Value> method = BuiltinMethod(obj, name);
  if (method) return *method;
  if (obj.is_dict()) {
    const Value* v = obj.dict().Find(name);
    if (v != nullptr) return *v;
  }
  return Value::Undefined("'" + ObjectTypeRepr(obj) + "' has no attribute '" + name + "'");
}

namespace {

// Python index normalization; returns false when out of range.
bool NormalizeIndex(int64_t index, size_t size, size_t* out) {
  int64_t n = static_cast<int64_t>(size);
  if (index < 0) index += n;
  if (index < 0 || index >= n) return false;
  *out = static_cast<size_t>(index);
  return true;
}

}  // namespace

Value GetItem(const Value& obj, const Value& key) {
  if (obj.is_undefined()) obj.ThrowUndefined();
  if (obj.is_dict()) {
    if (key.is_list() || key.is_dict()) ThrowTypeError("unhashable type: '" + key.TypeName() + "'");
    const Value* v = obj.dict().Find(key);
    if (v != nullptr) return *v;
  } else if (obj.is_object() && key.is_string()) {
    const Value* v = obj.object().attrs->Find(key.as_string());
    if (v != nullptr) return *v;
  } else if (obj.is_sequence() && key.is_integral()) {
    size_t i;
    if (NormalizeIndex(key.as_int(), obj.items().size(), &i)) return obj.items()[i];
  } else if (obj.is_string() && key.is_integral()) {
    const std::string& s = obj.as_string();
    size_t i;
    if (py::IsAscii(s)) {
      if (NormalizeIndex(key.as_int(), s.size(), &i)) return Value::String(std::string(1, s[i]));
    } else {
      std::u32string text = py::Decode(s);
      if (NormalizeIndex(key.as_int(), text.size(), &i)) return Value::String(py::Encode(text.substr(i, 1)));
    }
  }
  if (key.is_string()) {
    if (obj.is_object()) {
      return Value::Undefined("'" + obj.TypeName() + " object' has no attribute '" + key.as_string() + "'");
    }
    std::optional<Value> method = BuiltinMethod(obj, key.as_string());
    if (method) return *method;
    return Value::Undefined("'" + ObjectTypeRepr(obj) + "' has no attribute '" + key.as_string() + "'");
  }
  if (key.is_undefined()) key.ThrowUndefined();
  return Value::Undefined("'" + ObjectTypeRepr(obj) + "' has no element " + key.Repr());
}

Value Slice(const Value& obj, const Value* start_v, const Value* stop_v, const Value* step_v) {
  if (obj.is_undefined()) obj.ThrowUndefined();
  auto opt_int = [](const Value* v, const char* what) -> std::optional<int64_t> {
    if (v == nullptr || v->is_none()) return std::nullopt;
    if (!v->is_integral()) ThrowTypeError(std::string("slice ") + what + " must be an integer or None, not " + v->TypeName());
    return v->as_int();
  };
  std::optional<int64_t> start = opt_int(start_v, "start"), stop = opt_int(stop_v, "stop"), step_o = opt_int(step_v, "step");
  int64_t step = step_o.value_or(1);
  if (step == 0) ThrowTypeError("slice step cannot be zero");
  bool ascii = obj.is_string() && py::IsAscii(obj.as_string());
  std::u32string text;
  int64_t n;
  if (obj.is_string()) {
    if (!ascii) text = py::Decode(obj.as_string());
    n = ascii ? static_cast<int64_t>(obj.as_string().size()) : static_cast<int64_t>(text.size());
  } else if (obj.is_sequence()) {
    n = static_cast<int64_t>(obj.items().size());
  } else {
    ThrowTypeError("'" + obj.TypeName() + "' object is not subscriptable");
  }
  auto adjust = [&](std::optional<int64_t> v, int64_t def) {
    if (!v) return def;
    int64_t x = *v;
    if (x < 0) {
      x += n;
      if (x < 0) x = step < 0 ? -1 : 0;
    } else if (x >= n) {
      x = step < 0 ? n - 1 : n;
    }
    return x;
  };
  int64_t lo = adjust(start, step < 0 ? n - 1 : 0);
  int64_t hi = adjust(stop, step < 0 ? -1 : n);
  std::vector<int64_t> indices;
  if (step > 0) {
    for (int64_t i = lo; i < hi; i += step) indices.push_back(i);
  } else {
    for (int64_t i = lo; i > hi; i += step) indices.push_back(i);
  }
  if (obj.is_string()) {
    if (ascii && step == 1) return Value::String(obj.as_string().substr(lo, indices.size()));
    std::string out;
    for (int64_t i : indices) {
      if (ascii) {
        out.push_back(obj.as_string()[i]);
      } else {
        py::AppendUtf8(text[i], &out);
      }
    }
    return Value::String(std::move(out));
  }
  ValueList out;
  out.reserve(indices.size());
  for (int64_t i : indices) out.push_back(obj.items()[i]);
  return obj.is_tuple() ? Value::Tuple(std::move(out)) : Value::List(std::move(out));
}

ValueList Iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      return v.items();
    case Value::Kind::kDict: {
      ValueList keys;
      keys.reserve(v.dict().size());
      for (const auto& [key, value] : v.dict().entries()) keys.push_back(key);
      return keys;
    }
    case Value::Kind::kString: {
      ValueList chars;
      for (char32_t cp : py::Decode(v.as_string())) {
        std::string s;
        py::AppendUtf8(cp, &s);
        chars.push_back(Value::String(std::move(s)));
      }
      return chars;
    }
    case Value::Kind::kUndefined:
      return {};
    default:
      ThrowTypeError("'" + v.TypeName() + "' object is not iterable");
  }
}

int64_t Length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kString:
      return static_cast<int64_t>(py::CodePointCount(v.as_string()));
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      return static_cast<int64_t>(v.items().size());
    case Value::Kind::kDict:
      return static_cast<int64_t>(v.dict().size());
    case Value::Kind::kUndefined:
      return 0;
    default:
      ThrowTypeError("object of type '" + v.TypeName() + "' has no len()");
  }
}

}  // namespace tandem::jinja
