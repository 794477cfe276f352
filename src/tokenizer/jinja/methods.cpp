#include "tokenizer/jinja/methods.h"

#include <array>
#include <string_view>

#include "tokenizer/jinja/operators.h"
#include "tokenizer/jinja/py_format.h"
#include "tokenizer/jinja/py_text.h"

namespace tandem::jinja {
namespace {

constexpr std::array<std::string_view, 9> kListMutators = {"append", "clear", "extend", "insert", "pop",
                                                          "remove", "reverse", "sort", "__setitem__"};
constexpr std::array<std::string_view, 6> kDictMutators = {"clear", "pop", "popitem", "setdefault", "update",
                                                          "__setitem__"};

const std::string* OptString(const CallArgs& args, size_t index, std::string_view name, const char* method) {
  const Value* v = args.Find(index, name);
  if (v == nullptr || v->is_none()) return nullptr;
  if (!v->is_string()) ThrowTypeError(std::string(method) + "() argument must be str or None, not " + v->TypeName());
  return &v->as_string();
}

const std::string& ReqString(const CallArgs& args, size_t index, std::string_view name, const char* method) {
  const Value* v = args.Find(index, name);
  if (v == nullptr) ThrowTypeError(std::string(method) + "() missing required argument '" + std::string(name) + "'");
  if (!v->is_string()) ThrowTypeError(std::string(method) + "() argument must be str, not " + v->TypeName());
  return v->as_string();
}

int64_t OptInt(const CallArgs& args, size_t index, std::string_view name, int64_t def) {
  const Value* v = args.Find(index, name);
  if (v == nullptr || v->is_none()) return def;
  return ToInt(*v, std::string(name));
}

// startswith/endswith accept a str or a tuple of str.
bool AffixMatch(const std::string& s, const Value& affix, bool prefix) {
  auto one = [&](const Value& a) {
    if (!a.is_string()) ThrowTypeError("startswith/endswith first arg must be str or a tuple of str, not " + a.TypeName());
    const std::string& x = a.as_string();
    if (x.size() > s.size()) return false;
    return prefix ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0;
  };
  if (affix.is_tuple()) {
    for (const Value& a : affix.items()) {
      if (one(a)) return true;
    }
    return false;
  }
  return one(affix);
}

Value StringList(std::vector<std::string> parts) {
  ValueList out;
  out.reserve(parts.size());
  for (auto& p : parts) out.push_back(Value::String(std::move(p)));
  return Value::List(std::move(out));
}

std::optional<Value> StringMethod(const Value& obj, const std::string& name) {
  std::string s = obj.as_string();
  auto bind = [&](std::function<Value(CallArgs&)> fn) { return Value::Function("str." + name, std::move(fn)); };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    bool left = name != "rstrip", right = name != "lstrip";
    return bind([s, left, right](CallArgs& a) {
      return Value::String(py::Strip(s, OptString(a, 0, "chars", "strip"), left, right));
    });
  }
  if (name == "split" || name == "rsplit") {
    return bind([s](CallArgs& a) {
      return StringList(py::Split(s, OptString(a, 0, "sep", "split"), OptInt(a, 1, "maxsplit", -1)));
    });
  }
  if (name == "splitlines") return bind([s](CallArgs&) { return StringList(py::SplitLines(s)); });
  if (name == "startswith" || name == "endswith") {
    bool prefix = name == "startswith";
    return bind([s, prefix](CallArgs& a) {
      const Value* affix = a.Find(0, "prefix");
      if (affix == nullptr) ThrowTypeError("startswith/endswith takes at least 1 argument");
      return Value::Bool(AffixMatch(s, *affix, prefix));
    });
  }
  if (name == "upper") return bind([s](CallArgs&) { return Value::String(py::Upper(s)); });
  if (name == "lower") return bind([s](CallArgs&) { return Value::String(py::Lower(s)); });
  if (name == "title") return bind([s](CallArgs&) { return Value::String(py::Title(s)); });
  if (name == "capitalize") return bind([s](CallArgs&) { return Value::String(py::Capitalize(s)); });
  if (name == "replace") {
    return bind([s](CallArgs& a) {
      return Value::String(py::Replace(s, ReqString(a, 0, "old", "replace"), ReqString(a, 1, "new", "replace"),
                                       OptInt(a, 2, "count", -1)));
    });
  }
  if (name == "find" || name == "index" || name == "rfind") {
    std::string method = name;
    return bind([s, method](CallArgs& a) {
      const std::string& sub = ReqString(a, 0, "sub", method.c_str());
      size_t at = method == "rfind" ? s.rfind(sub) : s.find(sub);
      if (at == std::string::npos) {
        if (method == "index") ThrowTypeError("substring not found");
        return Value::Int(-1);
      }
      return Value::Int(static_cast<int64_t>(py::CodePointCount(std::string_view(s).substr(0, at))));
    });
  }
  if (name == "count") {
    return bind([s](CallArgs& a) { return Value::Int(py::Count(s, ReqString(a, 0, "sub", "count"))); });
  }
  if (name == "join") {
    return bind([s](CallArgs& a) {
      const Value* items = a.Find(0, "iterable");
      if (items == nullptr) ThrowTypeError("join() takes exactly one argument");
      std::string out;
      bool first = true;
      for (const Value& v : Iterate(*items)) {
        if (!v.is_string()) ThrowTypeError("sequence item: expected str instance, " + v.TypeName() + " found");
        if (!first) out += s;
        first = false;
        out += v.as_string();
      }
      return Value::String(std::move(out));
    });
  }
  if (name == "format") return bind([s](CallArgs& a) { return Value::String(py::StrFormat(s, a)); });
  if (name == "isdigit" || name == "isnumeric" || name == "isdecimal" || name == "isalpha" || name == "isalnum" ||
      name == "isspace" || name == "islower" || name == "isupper") {
    std::string method = name;
    return bind([s, method](CallArgs&) {
      std::u32string text = py::Decode(s);
      if (text.empty()) return Value::Bool(false);
      if (method == "islower" || method == "isupper") {
        std::string conv = method == "islower" ? py::Lower(s) : py::Upper(s);
        bool cased = py::Lower(s) != py::Upper(s);
        return Value::Bool(cased && conv == s);
      }
      for (char32_t c : text) {
        bool digit = c >= '0' && c <= '9';
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= 0xC0 && !py::IsSpace(c));
        bool ok = method == "isspace"   ? py::IsSpace(c)
                  : method == "isalpha" ? alpha
                  : method == "isalnum" ? alpha || digit
                                        : digit;
        if (!ok) return Value::Bool(false);
      }
      return Value::Bool(true);
    });
  }
  return std::nullopt;
}

std::optional<Value> DictMethod(const Value& obj, const std::string& name) {
  auto bind = [&](std::function<Value(CallArgs&)> fn) { return Value::Function("dict." + name, std::move(fn)); };
  if (name == "items") {
    return bind([obj](CallArgs&) {
      ValueList out;
      for (const auto& [k, v] : obj.dict().entries()) out.push_back(Value::Tuple({k, v}));
      return Value::List(std::move(out));
    });
  }
  if (name == "keys") {
    return bind([obj](CallArgs&) {
      ValueList out;
      for (const auto& [k, v] : obj.dict().entries()) out.push_back(k);
      return Value::List(std::move(out));
    });
  }
  if (name == "values") {
    return bind([obj](CallArgs&) {
      ValueList out;
      for (const auto& [k, v] : obj.dict().entries()) out.push_back(v);
      return Value::List(std::move(out));
    });
  }
  if (name == "get") {
    return bind([obj](CallArgs& a) {
      const Value* key = a.Find(0, "key");
      if (key == nullptr) ThrowTypeError("get expected at least 1 argument, got 0");
      const Value* v = obj.dict().Find(*key);
      if (v != nullptr) return *v;
      const Value* def = a.Find(1, "default");
      return def != nullptr ? *def : Value::None();
    });
  }
  if (name == "copy") return bind([obj](CallArgs&) { return Value::Dict(obj.dict()); });
  for (std::string_view m : kDictMutators) {
    if (name == m) {
      return Value::Undefined("access to attribute '" + name + "' of 'dict' object is unsafe.", ErrorKind::kSecurity);
    }
  }
  return std::nullopt;
}

std::optional<Value> ListMethod(const Value& obj, const std::string& name) {
  auto bind = [&](std::function<Value(CallArgs&)> fn) { return Value::Function("list." + name, std::move(fn)); };
  if (name == "index" || name == "count") {
    bool count = name == "count";
    return bind([obj, count](CallArgs& a) {
      const Value* x = a.Find(0, "value");
      if (x == nullptr) ThrowTypeError("list.index/count takes exactly one argument");
      int64_t n = 0;
      for (size_t i = 0; i < obj.items().size(); ++i) {
        if (Equals(obj.items()[i], *x)) {
          if (!count) return Value::Int(static_cast<int64_t>(i));
          ++n;
        }
      }
      if (!count) ThrowTypeError(x->Repr() + " is not in list");
      return Value::Int(n);
    });
  }
  if (name == "copy" && obj.is_list()) return bind([obj](CallArgs&) { return Value::List(obj.items()); });
  if (obj.is_list()) {
    for (std::string_view m : kListMutators) {
      if (name == m) {
        return Value::Undefined("access to attribute '" + name + "' of 'list' object is unsafe.", ErrorKind::kSecurity);
      }
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<Value> BuiltinMethod(const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Value::Kind::kString: return StringMethod(obj, name);
    case Value::Kind::kDict: return DictMethod(obj, name);
    case Value::Kind::kList:
    case Value::Kind::kTuple: return ListMethod(obj, name);
    default: return std::nullopt;
  }
}

}  // namespace tandem::jinja
