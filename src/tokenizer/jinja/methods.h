// Methods of builtin types that templates call: str.strip/split/startswith/format/...,
// dict.items/keys/values/get, list.index/count. Mutating methods (list.append, dict.update, ...)
// resolve to an undefined value that fails when called, as in jinja2's ImmutableSandboxedEnvironment.
#pragma once

#include <optional>
#include <string>

#include "tokenizer/jinja/value.h"

namespace tandem::jinja {

// The bound method `obj.name`, or nullopt when `obj` has no such method.
std::optional<Value> BuiltinMethod(const Value& obj, const std::string& name);

}  // namespace tandem::jinja
