// Parser: builds the AST from lexer tokens following jinja2's grammar and operator precedence
// (filters and tests bind tighter than arithmetic; `**` is left-associative as in jinja2).
#pragma once

#include <vector>

#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/lexer.h"

namespace tandem::jinja {

constexpr int kMaxParseDepth = 128;  // nesting of expressions and blocks

// Throws TemplateError(kSyntax) on a syntax error; Template::Parse turns it into a Status.
StmtList ParseTokens(const std::vector<Token>& tokens);

}  // namespace tandem::jinja
