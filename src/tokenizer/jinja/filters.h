// Jinja filters (`x | trim`, `tools | tojson(indent=4)`, `messages | selectattr('role', 'equalto',
// 'user')`): jinja2's builtin filters plus HF's tojson (json.dumps with ensure_ascii=False).
#pragma once

#include <string>

#include "tokenizer/jinja/value.h"

namespace tandem::jinja {

class Interpreter;

// Throws TemplateError for an unknown filter name or bad arguments.
Value ApplyFilter(Interpreter& interpreter, const std::string& name, const Value& value, CallArgs& args);

}  // namespace tandem::jinja
