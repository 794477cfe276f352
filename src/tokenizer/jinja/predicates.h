// Jinja tests (`x is defined`, `x is divisibleby 3`, `select('equalto', 'a')`), as jinja2 defines them.
#pragma once

#include <string>

#include "tokenizer/jinja/value.h"

namespace tandem::jinja {

class Interpreter;

// Throws TemplateError for an unknown test name or bad arguments.
bool ApplyTest(Interpreter& interpreter, const std::string& name, const Value& value, CallArgs& args);

}  // namespace tandem::jinja
