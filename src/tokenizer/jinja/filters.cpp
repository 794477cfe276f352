#include "tokenizer/jinja/filters.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "tokenizer/jinja/interpreter.h"
#include "tokenizer/jinja/operators.h"
#include "tokenizer/jinja/py_format.h"
#include "tokenizer/jinja/py_text.h"

namespace tandem::jinja {
namespace {

// Resolves jinja2's dotted `attribute=` argument ("a.b", "0.name") on one item.
Value AttributeOf(const Value& item, const Value& attribute) {
  if (attribute.is_integral()) return GetItem(item, attribute);
  std::string path = attribute.Str();
  Value v = item;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    v = numeric ? GetItem(v, Value::Int(std::stoll(part))) : GetItem(v, Value::String(part));
    if (dot == std::string::npos) return v;
    start = dot + 1;
  }
}

bool BoolArg(const CallArgs& args, size_t index, std::string_view name, bool def) {
  const Value* v = args.Find(index, name);
  return v == nullptr ? def : v->Truthy();
}

const Value* OptArg(const CallArgs& args, size_t index, std::string_view name) {
  const Value* v = args.Find(index, name);
  return v == nullptr || v->is_none() ? nullptr : v;
}

// jinja2's sort key: lower-cased strings unless case_sensitive.
Value SortKey(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value::String(py::Lower(v.as_string()));
  return v;
}

ValueList SortValues(ValueList items, bool reverse, bool case_sensitive, const Value* attribute) {
  std::vector<std::pair<Value, size_t>> keyed;
  keyed.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    keyed.emplace_back(SortKey(attribute ? AttributeOf(items[i], *attribute) : items[i], case_sensitive), i);
  }
  std::stable_sort(keyed.begin(), keyed.end(), [reverse](const auto& a, const auto& b) {
    return reverse ? LessThan(b.first, a.first) : LessThan(a.first, b.first);
  });
  ValueList out;
  out.reserve(items.size());
  for (auto& [key, index] : keyed) out.push_back(items[index]);
  return out;
}

std::string HtmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

// Python int(str): optional sign, underscores between digits, surrounding whitespace.
bool ParsePyInt(const std::string& text, int base, int64_t* out) {
  std::string s = py::Strip(text, nullptr, true, true);
  s.erase(std::remove(s.begin(), s.end(), '_'), s.end());
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, base);
  if (errno != 0 || end == s.c_str() || *end != '\0') return false;
  *out = v;
  return true;
}

bool ParsePyFloat(const std::string& text, double* out) {
  std::string s = py::Strip(text, nullptr, true, true);
  if (s.empty()) return false;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || *end != '\0') return false;
  *out = v;
  return true;
}

// Python round(x, ndigits) for floats: correctly rounded, ties to even.
double PyRound(double x, int64_t ndigits) {
  if (!std::isfinite(x)) return x;
  if (ndigits > 300) return x;
  if (ndigits < -300) return 0.0 * x;
  if (ndigits >= 0) {
    char buf[512];
    std::snprintf(buf, sizeof(buf), "%.*f", static_cast<int>(ndigits), x);
    return std::strtod(buf, nullptr);
  }
  double p = std::pow(10.0, static_cast<double>(-ndigits));
  double y = x / p;
  double r = std::nearbyint(y);
  return r * p;
}

Value SelectOrReject(Interpreter& in, const Value& value, CallArgs& args, bool select, bool by_attribute) {
  ValueList out;
  size_t next = 0;
  const Value* attribute = nullptr;
  if (by_attribute) {
    attribute = args.Find(0, "attr");
    if (attribute == nullptr) ThrowTypeError("selectattr/rejectattr need an attribute name");
    next = 1;
  }
  std::string test;
  CallArgs test_args;
  if (next < args.positional.size()) {
    test = args.positional[next].Str();
    test_args.positional.assign(args.positional.begin() + next + 1, args.positional.end());
    test_args.keyword = args.keyword;
  }
  for (const Value& item : Iterate(value)) {
    in.Step();
    Value subject = attribute ? AttributeOf(item, *attribute) : item;
    bool ok = test.empty() ? subject.Truthy() : in.CallTest(test, subject, test_args);
    if (ok == select) out.push_back(item);
  }
  return Value::List(std::move(out));
}

Value MapFilter(Interpreter& in, const Value& value, CallArgs& args) {
  ValueList out;
  const Value* attribute = nullptr;
  const Value* def = nullptr;
  for (const auto& [key, v] : args.keyword) {
    if (key == "attribute") attribute = &v;
    if (key == "default") def = &v;
  }
  if (attribute != nullptr) {
    for (const Value& item : Iterate(value)) {
      in.Step();
      Value v = AttributeOf(item, *attribute);
      out.push_back(v.is_undefined() && def ? *def : v);
    }
    return Value::List(std::move(out));
  }
  if (args.positional.empty()) ThrowTypeError("map() needs a filter name or attribute=");
  std::string filter = args.positional[0].Str();
  CallArgs filter_args;
  filter_args.positional.assign(args.positional.begin() + 1, args.positional.end());
  filter_args.keyword = args.keyword;
  for (const Value& item : Iterate(value)) {
    in.Step();
    out.push_back(in.CallFilter(filter, item, filter_args));
  }
  return Value::List(std::move(out));
}

Value ToJson(const Value& value, const CallArgs& args) {
  args.CheckSignature("tojson", 4, {"ensure_ascii", "indent", "separators", "sort_keys"});
  py::JsonOptions opt;
  opt.ensure_ascii = BoolArg(args, 0, "ensure_ascii", false);
  if (const Value* indent = OptArg(args, 1, "indent")) {
    opt.has_indent = true;
    if (indent->is_string()) {
      opt.indent = indent->as_string();
    } else {
      int64_t n = ToInt(*indent, "tojson indent");
      opt.indent = std::string(static_cast<size_t>(std::clamp<int64_t>(n, 0, 64)), ' ');
    }
    opt.item_separator = ",";
  }
  if (const Value* seps = OptArg(args, 2, "separators")) {
    if (!seps->is_sequence() || seps->items().size() != 2) ThrowTypeError("tojson separators must be a pair of strings");
    opt.item_separator = seps->items()[0].Str();
    opt.key_separator = seps->items()[1].Str();
  }
  opt.sort_keys = BoolArg(args, 3, "sort_keys", false);
  return Value::String(py::JsonDumps(value, opt));
}

std::string Indent(const std::string& s, const Value* width, bool first, bool blank) {
  std::string indention = width == nullptr ? "    "
                          : width->is_string() ? width->as_string()
                                               : std::string(static_cast<size_t>(std::clamp<int64_t>(ToInt(*width, "indent"), 0, 1024)), ' ');
  std::vector<std::string> lines = py::SplitLines(s + "\n");
  std::string rv;
  if (blank) {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i > 0) rv += "\n" + indention;
      rv += lines[i];
    }
  } else {
    rv = lines.empty() ? "" : lines[0];
    for (size_t i = 1; i < lines.size(); ++i) rv += "\n" + (lines[i].empty() ? "" : indention + lines[i]);
  }
  if (first) rv = indention + rv;
  return rv;
}

Value MinMax(const Value& value, const CallArgs& args, bool want_max) {
  ValueList items = Iterate(value);
  if (items.empty()) return Value::Undefined(std::string("No aggregated item, sequence was empty."));
  bool case_sensitive = BoolArg(args, 0, "case_sensitive", false);
  const Value* attribute = OptArg(args, 1, "attribute");
  size_t best = 0;
  Value best_key = SortKey(attribute ? AttributeOf(items[0], *attribute) : items[0], case_sensitive);
  for (size_t i = 1; i < items.size(); ++i) {
    Value key = SortKey(attribute ? AttributeOf(items[i], *attribute) : items[i], case_sensitive);
    if (want_max ? LessThan(best_key, key) : LessThan(key, best_key)) {
      best = i;
      best_key = key;
    }
  }
  return items[best];
}

}  // namespace

Value ApplyFilter(Interpreter& in, const std::string& name, const Value& value, CallArgs& args) {
  const RenderLimits& limits = in.limits();
  if (name == "default" || name == "d") {
    const Value* def = args.Find(0, "default_value");
    bool boolean = BoolArg(args, 1, "boolean", false);
    if (value.is_undefined() || (boolean && !value.Truthy())) return def ? *def : Value::String("");
    return value;
  }
  if (name == "tojson") return ToJson(value, args);
  if (name == "safe" || name == "string") return value.is_string() ? value : Value::String(value.Str());
  if (name == "escape" || name == "e" || name == "forceescape") return Value::String(HtmlEscape(value.Str()));
  if (name == "trim") {
    const Value* chars = OptArg(args, 0, "chars");
    std::string set = chars ? chars->Str() : std::string();
    return Value::String(py::Strip(value.Str(), chars ? &set : nullptr, true, true));
  }
  if (name == "upper") return Value::String(py::Upper(value.Str()));
  if (name == "lower") return Value::String(py::Lower(value.Str()));
  if (name == "title") return Value::String(py::Title(value.Str()));
  if (name == "capitalize") return Value::String(py::Capitalize(value.Str()));
  if (name == "length" || name == "count") return Value::Int(Length(value));
  if (name == "list") return Value::List(Iterate(value));
  if (name == "first") {
    if (value.is_undefined()) value.ThrowUndefined();
    ValueList items = Iterate(value);
    return items.empty() ? Value::Undefined("No first item, sequence was empty.") : items.front();
  }
  if (name == "last") {
    if (value.is_undefined()) value.ThrowUndefined();
    ValueList items = Iterate(value);
    return items.empty() ? Value::Undefined("No last item, sequence was empty.") : items.back();
  }
  if (name == "join") {
    const Value* sep = args.Find(0, "d");
    const Value* attribute = OptArg(args, 1, "attribute");
    std::string separator = sep ? sep->Str() : "";
    std::string out;
    bool first = true;
    for (const Value& item : Iterate(value)) {
      if (!first) out += separator;
      first = false;
      out += (attribute ? AttributeOf(item, *attribute) : item).Str();
      if (out.size() > limits.max_output_bytes) throw TemplateError(ErrorKind::kLimit, "join result too large");
    }
    return Value::String(std::move(out));
  }
  if (name == "replace") {
    const Value* old_sub = args.Find(0, "old");
    const Value* new_sub = args.Find(1, "new");
    if (old_sub == nullptr || new_sub == nullptr) ThrowTypeError("replace needs 'old' and 'new'");
    const Value* count = OptArg(args, 2, "count");
    std::string out = py::Replace(value.Str(), old_sub->Str(), new_sub->Str(), count ? ToInt(*count, "replace count") : -1);
    if (out.size() > limits.max_output_bytes) throw TemplateError(ErrorKind::kLimit, "replace result too large");
    return Value::String(std::move(out));
  }
  if (name == "items") {
    if (value.is_undefined()) return Value::List({});
    if (!value.is_dict()) ThrowTypeError("can only get item pairs from a mapping, not " + value.TypeName());
    ValueList out;
    for (const auto& [k, v] : value.dict().entries()) out.push_back(Value::Tuple({k, v}));
    return Value::List(std::move(out));
  }
  if (name == "dictsort") {
    if (!value.is_dict()) ThrowTypeError("dictsort needs a mapping, not " + value.TypeName());
    bool case_sensitive = BoolArg(args, 0, "case_sensitive", false);
    const Value* by = args.Find(1, "by");
    bool by_value = by != nullptr && by->Str() == "value";
    bool reverse = BoolArg(args, 2, "reverse", false);
    ValueList pairs;
    for (const auto& [k, v] : value.dict().entries()) pairs.push_back(Value::Tuple({k, v}));
    Value index = Value::Int(by_value ? 1 : 0);
    return Value::List(SortValues(std::move(pairs), reverse, case_sensitive, &index));
  }
  if (name == "sort") {
    bool reverse = BoolArg(args, 0, "reverse", false);
    bool case_sensitive = BoolArg(args, 1, "case_sensitive", false);
    const Value* attribute = OptArg(args, 2, "attribute");
    return Value::List(SortValues(Iterate(value), reverse, case_sensitive, attribute));
  }
  if (name == "reverse") {
    if (value.is_string()) {
      std::u32string text = py::Decode(value.as_string());
      std::reverse(text.begin(), text.end());
      return Value::String(py::Encode(text));
    }
    ValueList items = Iterate(value);
    std::reverse(items.begin(), items.end());
    return Value::List(std::move(items));
  }
  if (name == "unique") {
    bool case_sensitive = BoolArg(args, 0, "case_sensitive", false);
    const Value* attribute = OptArg(args, 1, "attribute");
    ValueList out;
    std::vector<std::string> seen;
    for (const Value& item : Iterate(value)) {
      std::string key = HashKey(SortKey(attribute ? AttributeOf(item, *attribute) : item, case_sensitive));
      if (std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
      seen.push_back(key);
      out.push_back(item);
    }
    return Value::List(std::move(out));
  }
  if (name == "select") return SelectOrReject(in, value, args, true, false);
  if (name == "reject") return SelectOrReject(in, value, args, false, false);
  if (name == "selectattr") return SelectOrReject(in, value, args, true, true);
  if (name == "rejectattr") return SelectOrReject(in, value, args, false, true);
  if (name == "map") return MapFilter(in, value, args);
  if (name == "attr") {
    const Value* attribute = args.Find(0, "name");
    if (attribute == nullptr) ThrowTypeError("attr needs a name");
    return GetAttr(value, attribute->Str());
  }
  if (name == "int") {
    const Value* def = args.Find(0, "default");
    const Value* base = args.Find(1, "base");
    Value fallback = def ? *def : Value::Int(0);
    if (value.is_string()) {
      int64_t out;
      if (ParsePyInt(value.as_string(), base ? static_cast<int>(ToInt(*base, "int base")) : 10, &out)) return Value::Int(out);
      double d;
      if (ParsePyFloat(value.as_string(), &d) && std::isfinite(d) && std::fabs(d) < 9.2e18) {
        return Value::Int(static_cast<int64_t>(d));
      }
      return fallback;
    }
    if (value.is_integral()) return Value::Int(value.as_int());
    if (value.is_float() && std::isfinite(value.as_float()) && std::fabs(value.as_float()) < 9.2e18) {
      return Value::Int(static_cast<int64_t>(value.as_float()));
    }
    return fallback;
  }
  if (name == "float") {
    const Value* def = args.Find(0, "default");
    Value fallback = def ? *def : Value::Float(0.0);
    if (value.is_number()) return Value::Float(value.as_float());
    double d;
    if (value.is_string() && ParsePyFloat(value.as_string(), &d)) return Value::Float(d);
    return fallback;
  }
  if (name == "abs") {
    if (value.is_integral()) {
      if (value.as_int() == INT64_MIN) ThrowTypeError("integer overflow in abs");
      return Value::Int(std::llabs(value.as_int()));
    }
    if (value.is_float()) return Value::Float(std::fabs(value.as_float()));
    if (value.is_undefined()) value.ThrowUndefined();
    ThrowTypeError("bad operand type for abs(): '" + value.TypeName() + "'");
  }
  if (name == "round") {
    const Value* precision_v = args.Find(0, "precision");
    int64_t precision = precision_v ? ToInt(*precision_v, "round precision") : 0;
    const Value* method_v = args.Find(1, "method");
    std::string method = method_v ? method_v->Str() : "common";
    if (!value.is_number()) ThrowTypeError("round needs a number, not " + value.TypeName());
    if (method == "common") {
      if (value.is_integral()) return Value::Int(value.as_int());
      return Value::Float(PyRound(value.as_float(), precision));
    }
    if (method != "ceil" && method != "floor") ThrowTypeError("method must be common, ceil or floor");
    double p = std::pow(10.0, static_cast<double>(precision));
    double x = value.as_float() * p;
    return Value::Float((method == "ceil" ? std::ceil(x) : std::floor(x)) / p);
  }
  if (name == "sum") {
    const Value* attribute = OptArg(args, 0, "attribute");
    const Value* start = args.Find(1, "start");
    Value total = start ? *start : Value::Int(0);
    for (const Value& item : Iterate(value)) {
      total = BinaryOp("+", total, attribute ? AttributeOf(item, *attribute) : item, limits);
    }
    return total;
  }
  if (name == "min" || name == "max") return MinMax(value, args, name == "max");
  if (name == "indent") {
    return Value::String(Indent(value.Str(), OptArg(args, 0, "width"), BoolArg(args, 1, "first", false),
                                BoolArg(args, 2, "blank", false)));
  }
  if (name == "center") {
    const Value* width_v = args.Find(0, "width");
    int64_t width = width_v ? ToInt(*width_v, "center width") : 80;
    std::string s = value.Str();
    int64_t len = static_cast<int64_t>(py::CodePointCount(s));
    if (width <= len) return Value::String(s);
    if (static_cast<size_t>(width) > limits.max_output_bytes) throw TemplateError(ErrorKind::kLimit, "center width too large");
    int64_t pad = width - len;
    int64_t left = pad / 2 + (pad & width & 1);
    return Value::String(std::string(left, ' ') + s + std::string(pad - left, ' '));
  }
  if (name == "wordcount") {
    int64_t words = 0;
    bool in_word = false;
    for (char32_t cp : py::Decode(value.Str())) {
      bool word_char = cp == '_' || (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
                       (cp >= 0xAA && !py::IsSpace(cp) && cp != 0xD7 && cp != 0xF7);
      if (word_char && !in_word) ++words;
      in_word = word_char;
    }
    return Value::Int(words);
  }
  if (name == "batch") {
    const Value* count_v = args.Find(0, "linecount");
    if (count_v == nullptr) ThrowTypeError("batch needs a line count");
    int64_t count = ToInt(*count_v, "batch linecount");
    if (count <= 0) ThrowTypeError("batch linecount must be positive");
    const Value* fill = args.Find(1, "fill_with");
    ValueList out, cur;
    for (const Value& item : Iterate(value)) {
      cur.push_back(item);
      if (static_cast<int64_t>(cur.size()) == count) {
        out.push_back(Value::List(std::move(cur)));
        cur.clear();
      }
    }
    if (!cur.empty()) {
      if (fill && !fill->is_none()) {
        while (static_cast<int64_t>(cur.size()) < count) cur.push_back(*fill);
      }
      out.push_back(Value::List(std::move(cur)));
    }
    return Value::List(std::move(out));
  }
  if (name == "format") {
    if (!args.keyword.empty() && !args.positional.empty()) ThrowTypeError("format takes either positional or keyword arguments");
    return Value::String(py::PercentFormat(value.Str(), Value::Tuple(args.positional)));
  }
  if (name == "truncate") {
    const Value* length_v = args.Find(0, "length");
    int64_t length = length_v ? ToInt(*length_v, "truncate length") : 255;
    bool killwords = BoolArg(args, 1, "killwords", false);
    const Value* end_v = args.Find(2, "end");
    std::string end = end_v ? end_v->Str() : "...";
    const Value* leeway_v = args.Find(3, "leeway");
    int64_t leeway = leeway_v ? ToInt(*leeway_v, "truncate leeway") : 5;
    std::u32string s = py::Decode(value.Str());
    int64_t end_len = static_cast<int64_t>(py::CodePointCount(end));
    if (static_cast<int64_t>(s.size()) <= length + leeway) return Value::String(value.Str());
    int64_t keep = std::max<int64_t>(0, length - end_len);
    std::u32string head = s.substr(0, static_cast<size_t>(keep));
    if (!killwords) {
      size_t space = head.rfind(U' ');
      if (space != std::u32string::npos) head = head.substr(0, space);
    }
    return Value::String(py::Encode(head) + end);
  }
  if (name == "striptags") ThrowTypeError("the striptags filter is not supported");
  throw TemplateError(ErrorKind::kSyntax, "no filter named '" + name + "'");
}

}  // namespace tandem::jinja
