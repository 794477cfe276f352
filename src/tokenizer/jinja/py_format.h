// Python formatting of values: float repr, str/repr of containers, json.dumps (HF's tojson),
// printf-style `%` and str.format.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "tokenizer/jinja/value.h"

namespace tandem::jinja::py {

std::string FloatRepr(double d);           // repr(float): 1.0, 1e+16, 0.30000000000000004, nan
std::string StringRepr(std::string_view s);  // repr(str): 'a', "it's", '\n'

struct JsonOptions {
  bool ensure_ascii = false;
  bool has_indent = false;
  std::string indent;  // one level of indentation when has_indent
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
};
// json.dumps(value, ...). Throws TypeError for values JSON cannot hold (undefined, callables).
std::string JsonDumps(const Value& value, const JsonOptions& options);

// "fmt % args" for %s %r %d %i %f %x %%; args is a tuple or a single value.
std::string PercentFormat(std::string_view fmt, const Value& args);
// str.format with {} / {0} / {name} fields (no format specs beyond an empty one).
std::string StrFormat(std::string_view fmt, const CallArgs& args);

}  // namespace tandem::jinja::py
