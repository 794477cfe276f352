// Value: a Jinja runtime value with Python semantics (what jinja2 sees when HF renders a chat
// template): undefined, None, bool, int, float, str, list, tuple, dict (insertion ordered),
// callables (builtins, bound methods, macros) and attribute objects (namespace(), loop).
//
// Containers are shared by pointer like Python objects; only namespaces are mutated after
// creation (the sandbox forbids list.append and friends). Values never outlive one Render call
// unless they hold no callables.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/jinja/template_error.h"

namespace tandem::jinja {

class Value;
class ValueDict;
using ValueList = std::vector<Value>;

// Arguments of a call: positional then keyword, in source order.
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;

  // Binds argument `index` / `name` of a Python signature; nullptr when not passed.
  const Value* Find(size_t index, std::string_view name) const;
  // Fails (TypeError) when more than `max_positional` positional or an unknown keyword is passed.
  void CheckSignature(std::string_view function, size_t max_positional,
                      std::initializer_list<std::string_view> keywords) const;
};

struct Callable {
  std::string name;
  std::function<Value(CallArgs&)> fn;
};

// An object with attributes: `namespace(...)` (mutable through {% set ns.x = ... %}) and `loop`.
struct AttrObject {
  std::string type_name;  // "Namespace", "LoopContext"
  std::shared_ptr<ValueDict> attrs;
};

class Value {
 public:
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kTuple, kDict, kCallable, kObject };

  Value() : kind_(Kind::kUndefined) {}
  static Value Undefined(std::string hint, ErrorKind error = ErrorKind::kUndefined);
  static Value None();
  static Value Bool(bool b);
  static Value Int(int64_t i);
  static Value Float(double d);
  static Value String(std::string s);
  static Value List(ValueList items);
  static Value Tuple(ValueList items);
  static Value Dict(ValueDict dict);
  static Value Function(std::string name, std::function<Value(CallArgs&)> fn);
  static Value Object(std::string type_name, ValueDict attrs);
  // Converts JSON (objects keep their key order for ordered_json). Fails past `max_depth` levels.
  static Value FromJson(const nlohmann::ordered_json& json, int max_depth = 128);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_tuple() const { return kind_ == Kind::kTuple; }
  bool is_sequence() const { return kind_ == Kind::kList || kind_ == Kind::kTuple; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_callable() const { return kind_ == Kind::kCallable; }
  bool is_object() const { return kind_ == Kind::kObject; }
  bool is_integral() const { return kind_ == Kind::kInt || kind_ == Kind::kBool; }  // Python int
  bool is_number() const { return is_integral() || kind_ == Kind::kFloat; }

  bool as_bool() const { return int_ != 0; }
  int64_t as_int() const { return int_; }  // bool: 0/1
  double as_float() const { return kind_ == Kind::kFloat ? float_ : static_cast<double>(int_); }
  const std::string& as_string() const { return *string_; }
  const ValueList& items() const { return *list_; }
  const ValueDict& dict() const { return *dict_; }
  const Callable& callable() const { return *callable_; }
  const AttrObject& object() const { return *object_; }
  AttrObject& mutable_object() const { return *object_; }
  const std::string& undefined_hint() const { return *string_; }
  ErrorKind undefined_error() const { return undefined_error_; }

  // Python truthiness.
  bool Truthy() const;
  // Python str() (what {{ x }} prints); undefined prints empty.
  std::string Str() const;
  // Python repr() (used inside containers).
  std::string Repr() const;
  // Python type name for messages: "str", "int", "NoneType", "dict", "Undefined".
  std::string TypeName() const;
  // Throws the UndefinedError this undefined value carries (accessing or operating on it).
  [[noreturn]] void ThrowUndefined() const;

 private:
  Kind kind_;
  ErrorKind undefined_error_ = ErrorKind::kUndefined;
  int64_t int_ = 0;
  double float_ = 0;
  std::shared_ptr<const std::string> string_;  // string or undefined hint
  std::shared_ptr<const ValueList> list_;
  std::shared_ptr<const ValueDict> dict_;
  std::shared_ptr<const Callable> callable_;
  std::shared_ptr<AttrObject> object_;
};

// Insertion-ordered dict with Python key equality (1 == 1.0 == True); keys must be hashable.
class ValueDict {
 public:
  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  const std::vector<std::pair<Value, Value>>& entries() const { return entries_; }
  const Value* Find(const Value& key) const;
  const Value* Find(std::string_view key) const;
  void Set(Value key, Value value);

 private:
  std::vector<std::pair<Value, Value>> entries_;
  std::unordered_map<std::string, size_t> index_;
};

// Python ==, with numeric cross-type equality and element-wise containers.
bool Equals(const Value& a, const Value& b);
// Python <; throws TypeError for unorderable types.
bool LessThan(const Value& a, const Value& b);
// Canonical hash key (throws TypeError "unhashable type" for list/dict).
std::string HashKey(const Value& v);

}  // namespace tandem::jinja
