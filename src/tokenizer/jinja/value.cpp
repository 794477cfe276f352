#include "tokenizer/jinja/value.h"

#include <cmath>

#include "tokenizer/jinja/py_format.h"

namespace tandem::jinja {

const Value* CallArgs::Find(size_t index, std::string_view name) const {
  if (index < positional.size()) return &positional[index];
  for (const auto& [key, value] : keyword) {
    if (key == name) return &value;
  }
  return nullptr;
}

void CallArgs::CheckSignature(std::string_view function, size_t max_positional,
                              std::initializer_list<std::string_view> keywords) const {
  if (positional.size() > max_positional) {
    ThrowTypeError(std::string(function) + "() takes at most " + std::to_string(max_positional) +
                   " positional argument(s) (" + std::to_string(positional.size()) + " given)");
  }
  for (const auto& [key, value] : keyword) {
    bool known = false;
    for (std::string_view k : keywords) known = known || k == key;
    if (!known) {
      ThrowTypeError(std::string(function) + "() got an unexpected keyword argument '" + key + "'");
    }
  }
}

Value Value::Undefined(std::string hint, ErrorKind error) {
  Value v;
  v.string_ = std::make_shared<const std::string>(std::move(hint));
  v.undefined_error_ = error;
  return v;
}

Value Value::None() {
  Value v;
  v.kind_ = Kind::kNone;
  return v;
}

Value Value::Bool(bool b) {
  Value v;
  v.kind_ = Kind::kBool;
  v.int_ = b ? 1 : 0;
  return v;
}

Value Value::Int(int64_t i) {
  Value v;
  v.kind_ = Kind::kInt;
  v.int_ = i;
  return v;
}

Value Value::Float(double d) {
  Value v;
  v.kind_ = Kind::kFloat;
  v.float_ = d;
  return v;
}

Value Value::String(std::string s) {
  Value v;
  v.kind_ = Kind::kString;
  v.string_ = std::make_shared<const std::string>(std::move(s));
  return v;
}

Value Value::List(ValueList items) {
  Value v;
  v.kind_ = Kind::kList;
  v.list_ = std::make_shared<const ValueList>(std::move(items));
  return v;
}

Value Value::Tuple(ValueList items) {
  Value v = List(std::move(items));
  v.kind_ = Kind::kTuple;
  return v;
}

Value Value::Dict(ValueDict dict) {
  Value v;
  v.kind_ = Kind::kDict;
  v.dict_ = std::make_shared<const ValueDict>(std::move(dict));
  return v;
}

Value Value::Function(std::string name, std::function<Value(CallArgs&)> fn) {
  Value v;
  v.kind_ = Kind::kCallable;
  v.callable_ = std::make_shared<const Callable>(Callable{std::move(name), std::move(fn)});
  return v;
}

Value Value::Object(std::string type_name, ValueDict attrs) {
  Value v;
  v.kind_ = Kind::kObject;
  v.object_ = std::make_shared<AttrObject>(
      AttrObject{std::move(type_name), std::make_shared<ValueDict>(std::move(attrs))});
  return v;
}

Value Value::FromJson(const nlohmann::ordered_json& json, int max_depth) {
  if (max_depth <= 0) {
    throw TemplateError(ErrorKind::kLimit, "input JSON is nested too deeply");
  }
  switch (json.type()) {
    case nlohmann::ordered_json::value_t::null:
    case nlohmann::ordered_json::value_t::discarded:
      return None();
    case nlohmann::ordered_json::value_t::boolean:
      return Bool(json.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return Int(json.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      uint64_t u = json.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return Float(static_cast<double>(u));
      return Int(static_cast<int64_t>(u));
    }
    case nlohmann::ordered_json::value_t::number_float:
      return Float(json.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return String(json.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      ValueList items;
      items.reserve(json.size());
      for (const auto& item : json) items.push_back(FromJson(item, max_depth - 1));
      return List(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      ValueDict dict;
      for (auto it = json.begin(); it != json.end(); ++it) {
        dict.Set(String(it.key()), FromJson(it.value(), max_depth - 1));
      }
      return Dict(std::move(dict));
    }
    case nlohmann::ordered_json::value_t::binary:
      break;
  }
  ThrowTypeError("binary JSON values are not supported in chat templates");
}

bool Value::Truthy() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
    case Kind::kInt:
      return int_ != 0;
    case Kind::kFloat:
      return float_ != 0.0;
    case Kind::kString:
      return !string_->empty();
    case Kind::kList:
    case Kind::kTuple:
      return !list_->empty();
    case Kind::kDict:
      return !dict_->empty();
    case Kind::kCallable:
    case Kind::kObject:
      return true;
  }
  return false;
}

std::string Value::Str() const {
  switch (kind_) {
    case Kind::kUndefined:
      return "";
    case Kind::kString:
      return *string_;
    default:
      return Repr();
  }
}

std::string Value::Repr() const {
  switch (kind_) {
    case Kind::kUndefined:
      return "";
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return int_ ? "True" : "False";
    case Kind::kInt:
      return std::to_string(int_);
    case Kind::kFloat:
      return py::FloatRepr(float_);
    case Kind::kString:
      return py::StringRepr(*string_);
    case Kind::kList:
    case Kind::kTuple: {
      std::string out = kind_ == Kind::kList ? "[" : "(";
      for (size_t i = 0; i < list_->size(); ++i) {
        if (i > 0) out += ", ";
        out += (*list_)[i].Repr();
      }
      if (kind_ == Kind::kTuple && list_->size() == 1) out += ",";
      out += kind_ == Kind::kList ? "]" : ")";
      return out;
    }
    case Kind::kDict: {
      std::string out = "{";
      bool first = true;
      for (const auto& [key, value] : dict_->entries()) {
        if (!first) out += ", ";
        first = false;
        out += key.Repr() + ": " + value.Repr();
      }
      return out + "}";
    }
    case Kind::kCallable:
      return "<function " + callable_->name + ">";
    case Kind::kObject: {
      std::string out = "<" + object_->type_name + " {";
      bool first = true;
      for (const auto& [key, value] : object_->attrs->entries()) {
        if (!first) out += ", ";
        first = false;
        out += key.Repr() + ": " + value.Repr();
      }
      return out + "}>";
    }
  }
  return "";
}

std::string Value::TypeName() const {
  switch (kind_) {
    case Kind::kUndefined: return "Undefined";
    case Kind::kNone: return "NoneType";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kString: return "str";
    case Kind::kList: return "list";
    case Kind::kTuple: return "tuple";
    case Kind::kDict: return "dict";
    case Kind::kCallable: return "function";
    case Kind::kObject: return object_->type_name;
  }
  return "object";
}

void Value::ThrowUndefined() const {
  throw TemplateError(undefined_error_, string_ ? *string_ : std::string("value is undefined"));
}

std::string HashKey(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kNone:
      return "n";
    case Value::Kind::kBool:
    case Value::Kind::kInt:
      return "i" + std::to_string(v.as_int());
    case Value::Kind::kFloat: {
      double d = v.as_float();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.2e18) {
        return "i" + std::to_string(static_cast<int64_t>(d));
      }
      return "f" + py::FloatRepr(d);
    }
    case Value::Kind::kString:
      return "s" + v.as_string();
    case Value::Kind::kTuple: {
      std::string key = "t(";
      for (const Value& item : v.items()) key += HashKey(item) + "\x1f";
      return key + ")";
    }
    case Value::Kind::kCallable:
      return "c" + v.callable().name;
    default:
      ThrowTypeError("unhashable type: '" + v.TypeName() + "'");
  }
}

const Value* ValueDict::Find(const Value& key) const {
  auto it = index_.find(HashKey(key));
  return it == index_.end() ? nullptr : &entries_[it->second].second;
}

const Value* ValueDict::Find(std::string_view key) const {
  std::string k = "s";
  k.append(key);
  auto it = index_.find(k);
  return it == index_.end() ? nullptr : &entries_[it->second].second;
}

void ValueDict::Set(Value key, Value value) {
  std::string hash = HashKey(key);
  auto it = index_.find(hash);
  if (it != index_.end()) {
    entries_[it->second].second = std::move(value);
    return;
  }
  index_.emplace(std::move(hash), entries_.size());
  entries_.emplace_back(std::move(key), std::move(value));
}

bool Equals(const Value& a, const Value& b) {
  using K = Value::Kind;
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) return a.as_int() == b.as_int();
    return a.as_float() == b.as_float();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case K::kUndefined:
    case K::kNone:
      return true;
    case K::kString:
      return a.as_string() == b.as_string();
    case K::kList:
    case K::kTuple: {
      if (a.items().size() != b.items().size()) return false;
      for (size_t i = 0; i < a.items().size(); ++i) {
        if (!Equals(a.items()[i], b.items()[i])) return false;
      }
      return true;
    }
    case K::kDict: {
      if (a.dict().size() != b.dict().size()) return false;
      for (const auto& [key, value] : a.dict().entries()) {
        const Value* other = b.dict().Find(key);
        if (other == nullptr || !Equals(value, *other)) return false;
      }
      return true;
    }
    case K::kCallable:
      return &a.callable() == &b.callable();
    case K::kObject:
      return &a.object() == &b.object();
    default:
      return false;
  }
}

bool LessThan(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) return a.as_int() < b.as_int();
    return a.as_float() < b.as_float();
  }
  if (a.is_string() && b.is_string()) return a.as_string() < b.as_string();  // UTF-8 order = code point order
  if (a.kind() == b.kind() && a.is_sequence()) {
    const ValueList& x = a.items();
    const ValueList& y = b.items();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!Equals(x[i], y[i])) return LessThan(x[i], y[i]);
    }
    return x.size() < y.size();
  }
  if (a.is_undefined()) a.ThrowUndefined();
  if (b.is_undefined()) b.ThrowUndefined();
  ThrowTypeError("'<' not supported between instances of '" + a.TypeName() + "' and '" +
                 b.TypeName() + "'");
}

}  // namespace tandem::jinja
