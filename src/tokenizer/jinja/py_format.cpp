#include "tokenizer/jinja/py_format.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "tokenizer/jinja/py_text.h"

namespace tandem::jinja::py {

std::string FloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // "-1.2345e+17": shortest round-trip digits
  bool negative = sci[0] == '-';
  if (negative) sci.erase(0, 1);
  size_t e_pos = sci.find('e');
  std::string mantissa = sci.substr(0, e_pos);
  int exponent = std::stoi(sci.substr(e_pos + 1));
  std::string digits;
  for (char c : mantissa) {
    if (c != '.') digits.push_back(c);
  }
  std::string out = negative ? "-" : "";
  if (exponent >= -4 && exponent < 16) {
    if (exponent < 0) {
      out += "0." + std::string(-exponent - 1, '0') + digits;
    } else if (static_cast<int>(digits.size()) <= exponent + 1) {
      out += digits + std::string(exponent + 1 - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, exponent + 1) + "." + digits.substr(exponent + 1);
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  char exp_buf[16];
  std::snprintf(exp_buf, sizeof(exp_buf), "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
  return out + exp_buf;
}

namespace {

bool NeedsUnicodeEscape(char32_t cp) {
  return (cp >= 0x80 && cp <= 0xA0) || cp == 0xAD || (cp >= 0x200B && cp <= 0x200F) ||
         cp == 0x2028 || cp == 0x2029 || (cp >= 0x2060 && cp <= 0x2064) || cp == 0xFEFF ||
         (cp >= 0xD800 && cp <= 0xDFFF);
}

void AppendHexEscape(char32_t cp, std::string* out) {
  char buf[16];
  if (cp < 0x100) {
    std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned>(cp));
  } else if (cp < 0x10000) {
    std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(cp));
  } else {
    std::snprintf(buf, sizeof(buf), "\\U%08x", static_cast<unsigned>(cp));
  }
  out->append(buf);
}

}  // namespace

std::string StringRepr(std::string_view s) {
  bool has_single = s.find('\'') != std::string_view::npos;
  bool has_double = s.find('"') != std::string_view::npos;
  char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (char32_t cp : Decode(s)) {
    if (cp == static_cast<char32_t>(quote) || cp == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(cp));
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp < 0x20 || cp == 0x7F || NeedsUnicodeEscape(cp)) {
      AppendHexEscape(cp, &out);
    } else {
      AppendUtf8(cp, &out);
    }
  }
  out.push_back(quote);
  return out;
}

namespace {

void JsonString(std::string_view s, bool ensure_ascii, std::string* out) {
  out->push_back('"');
  for (char32_t cp : Decode(s)) {
    switch (cp) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      case '\b': *out += "\\b"; break;
      case '\f': *out += "\\f"; break;
      default: {
        char buf[16];
        if (cp < 0x20 || (ensure_ascii && cp > 0x7F)) {
          if (cp >= 0x10000) {
            char32_t v = cp - 0x10000;
            std::snprintf(buf, sizeof(buf), "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
          } else {
            std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(cp));
          }
          *out += buf;
        } else {
          AppendUtf8(cp, out);
        }
      }
    }
  }
  out->push_back('"');
}

std::string JsonKey(const Value& key) {
  switch (key.kind()) {
    case Value::Kind::kString: return key.as_string();
    case Value::Kind::kBool: return key.as_bool() ? "true" : "false";
    case Value::Kind::kInt: return std::to_string(key.as_int());
    case Value::Kind::kFloat: return FloatRepr(key.as_float());
    case Value::Kind::kNone: return "null";
    default:
      ThrowTypeError("keys must be str, int, float, bool or None, not " + key.TypeName());
  }
}

void Dump(const Value& v, const JsonOptions& opt, int depth, std::string* out) {
  if (depth > 200) throw TemplateError(ErrorKind::kLimit, "tojson: value nested too deeply");
  std::string newline_indent;
  std::string inner_indent;
  if (opt.has_indent) {
    newline_indent = "\n";
    for (int i = 0; i < depth; ++i) newline_indent += opt.indent;
    inner_indent = newline_indent + opt.indent;
  }
  switch (v.kind()) {
    case Value::Kind::kNone: *out += "null"; return;
    case Value::Kind::kBool: *out += v.as_bool() ? "true" : "false"; return;
    case Value::Kind::kInt: *out += std::to_string(v.as_int()); return;
    case Value::Kind::kFloat: {
      double d = v.as_float();
      if (std::isnan(d)) {
        *out += "NaN";
      } else if (std::isinf(d)) {
        *out += d > 0 ? "Infinity" : "-Infinity";
      } else {
        *out += FloatRepr(d);
      }
      return;
    }
    case Value::Kind::kString: JsonString(v.as_string(), opt.ensure_ascii, out); return;
    case Value::Kind::kList:
    case Value::Kind::kTuple: {
      if (v.items().empty()) {
        *out += "[]";
        return;
      }
      *out += "[";
      for (size_t i = 0; i < v.items().size(); ++i) {
        if (i > 0) *out += opt.item_separator;
        *out += inner_indent;
        Dump(v.items()[i], opt, depth + 1, out);
      }
      *out += newline_indent + "]";
      return;
    }
    case Value::Kind::kDict: {
      if (v.dict().empty()) {
        *out += "{}";
        return;
      }
      std::vector<std::pair<std::string, const Value*>> items;
      for (const auto& [key, value] : v.dict().entries()) items.emplace_back(JsonKey(key), &value);
      if (opt.sort_keys) {
        std::stable_sort(items.begin(), items.end(),
                         [](const auto& a, const auto& b) { return a.first < b.first; });
      }
      *out += "{";
      for (size_t i = 0; i < items.size(); ++i) {
        if (i > 0) *out += opt.item_separator;
        *out += inner_indent;
        JsonString(items[i].first, opt.ensure_ascii, out);
        *out += opt.key_separator;
        Dump(*items[i].second, opt, depth + 1, out);
      }
      *out += newline_indent + "}";
      return;
    }
    default:
      ThrowTypeError("Object of type " + v.TypeName() + " is not JSON serializable");
  }
}

}  // namespace

std::string JsonDumps(const Value& value, const JsonOptions& options) {
  std::string out;
  Dump(value, options, 0, &out);
  return out;
}

namespace {

// One printf-style conversion with Python's flags ("-+ 0#"), width and precision.
std::string FormatOne(const std::string& flags, int width, int precision, char conv, const Value& arg) {
  std::string body;
  if (conv == 's' || conv == 'r') {
    body = conv == 's' ? arg.Str() : arg.Repr();
    if (precision >= 0) body = Encode(Decode(body).substr(0, static_cast<size_t>(precision)));
    int pad = width - static_cast<int>(CodePointCount(body));
    if (pad > 0) {
      body = flags.find('-') != std::string::npos ? body + std::string(pad, ' ') : std::string(pad, ' ') + body;
    }
    return body;
  }
  if (!arg.is_number()) {
    if (arg.is_undefined()) arg.ThrowUndefined();
    ThrowTypeError(std::string("%") + conv + " format: a real number is required, not " + arg.TypeName());
  }
  std::string spec = "%" + flags;
  if (width > 0) spec += std::to_string(width);
  char buf[512];
  if (conv == 'd' || conv == 'i' || conv == 'x' || conv == 'X' || conv == 'o') {
    if (conv != 'd' && conv != 'i' && !arg.is_integral()) {
      ThrowTypeError(std::string("%") + conv + " format: an integer is required, not " + arg.TypeName());
    }
    long long n = arg.is_integral() ? arg.as_int() : static_cast<long long>(std::trunc(arg.as_float()));
    spec += std::string("ll") + (conv == 'i' ? 'd' : conv);
    std::snprintf(buf, sizeof(buf), spec.c_str(), n);
    return buf;
  }
  if (conv == 'f' || conv == 'F' || conv == 'e' || conv == 'E' || conv == 'g' || conv == 'G') {
    spec += "." + std::to_string(precision < 0 ? 6 : std::min(precision, 100)) + conv;
    std::snprintf(buf, sizeof(buf), spec.c_str(), arg.as_float());
    return buf;
  }
  ThrowTypeError(std::string("unsupported format character '") + conv + "'");
}

}  // namespace

std::string PercentFormat(std::string_view fmt, const Value& args) {
  std::vector<Value> list;
  if (args.is_tuple()) {
    list = args.items();
  } else {
    list.push_back(args);
  }
  size_t next = 0;
  std::string out;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out.push_back(fmt[i]);
      continue;
    }
    ++i;
    if (i < fmt.size() && fmt[i] == '%') {
      out.push_back('%');
      continue;
    }
    std::string flags;
    while (i < fmt.size() && std::string_view("-+ 0#").find(fmt[i]) != std::string_view::npos) flags.push_back(fmt[i++]);
    int width = 0;
    while (i < fmt.size() && fmt[i] >= '0' && fmt[i] <= '9') width = std::min(width * 10 + (fmt[i++] - '0'), 4096);
    int precision = -1;
    if (i < fmt.size() && fmt[i] == '.') {
      precision = 0;
      ++i;
      while (i < fmt.size() && fmt[i] >= '0' && fmt[i] <= '9') precision = std::min(precision * 10 + (fmt[i++] - '0'), 4096);
    }
    if (i >= fmt.size()) ThrowTypeError("incomplete format");
    if (next >= list.size()) ThrowTypeError("not enough arguments for format string");
    out += FormatOne(flags, width, precision, fmt[i], list[next++]);
  }
  if (next < list.size()) ThrowTypeError("not all arguments converted during string formatting");
  return out;
}

std::string StrFormat(std::string_view fmt, const CallArgs& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    char c = fmt[i];
    if (c == '}' && i + 1 < fmt.size() && fmt[i + 1] == '}') {
      out.push_back('}');
      ++i;
      continue;
    }
    if (c != '{') {
      out.push_back(c);
      continue;
    }
    if (i + 1 < fmt.size() && fmt[i + 1] == '{') {
      out.push_back('{');
      ++i;
      continue;
    }
    size_t close = fmt.find('}', i);
    if (close == std::string_view::npos) ThrowTypeError("Single '{' encountered in format string");
    std::string field(fmt.substr(i + 1, close - i - 1));
    if (field.find(':') != std::string::npos || field.find('!') != std::string::npos) {
      ThrowTypeError("str.format: format specs are not supported in chat templates ('{" + field + "}')");
    }
    const Value* arg = nullptr;
    if (field.empty()) {
      if (auto_index < args.positional.size()) arg = &args.positional[auto_index];
      ++auto_index;
    } else if (std::all_of(field.begin(), field.end(), [](char d) { return d >= '0' && d <= '9'; })) {
      size_t idx = std::stoul(field);
      if (idx < args.positional.size()) arg = &args.positional[idx];
    } else {
      for (const auto& [key, value] : args.keyword) {
        if (key == field) arg = &value;
      }
    }
    if (arg == nullptr) ThrowTypeError("str.format: no argument for field '{" + field + "}'");
    out += arg->Str();
    i = close;
  }
  return out;
}

}  // namespace tandem::jinja::py
