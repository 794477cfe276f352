// Python operators on Values as jinja2 evaluates them: arithmetic, `~`, comparisons, `in`,
// subscripts, slices and attribute lookup (x.y tries the attribute, then the item; x[y] the reverse).
#pragma once

#include <optional>
#include <string>

#include "tokenizer/jinja/render_limits.h"
#include "tokenizer/jinja/value.h"

namespace tandem::jinja {

// op is one of + - * / // % ** ~.
Value BinaryOp(const std::string& op, const Value& a, const Value& b, const RenderLimits& limits);
Value Negate(const Value& a);
// `a in b`.
bool Contains(const Value& container, const Value& item);
// jinja2 environment.getattr / getitem (undefined values carry jinja2's message).
Value GetAttr(const Value& obj, const std::string& name);
Value GetItem(const Value& obj, const Value& key);
// obj[start:stop:step]; null pointers are omitted parts.
Value Slice(const Value& obj, const Value* start, const Value* stop, const Value* step);
// Iterating a value: list/tuple items, dict keys, string code points, undefined -> empty.
ValueList Iterate(const Value& v);
// Python len().
int64_t Length(const Value& v);
// int(x) as Python does for numbers; throws TypeError otherwise.
int64_t ToInt(const Value& v, const std::string& what);

}  // namespace tandem::jinja
