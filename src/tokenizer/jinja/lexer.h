// Lexer: splits a template into data and tag tokens exactly as jinja2's lexer does with HF's
// settings (trim_blocks=True, lstrip_blocks=True): `-`/`+` whitespace control, comments and
// {% raw %} blocks are resolved here, so the parser only sees data and tag contents.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "tandem/status.h"

namespace tandem::jinja {

enum class TokenType {
  kData,           // literal template text
  kVariableBegin,  // {{
  kVariableEnd,    // }}
  kBlockBegin,     // {%
  kBlockEnd,       // %}
  kName,
  kString,   // value holds the decoded string
  kInteger,  // value holds the digits (underscores removed, base prefix kept)
  kFloat,
  kOperator,  // value holds the operator text: "+", "//", "==", "(", ...
  kEof,
};

struct Token {
  TokenType type;
  std::string value;
  int line;
};

struct LexerOptions {
  bool trim_blocks = true;
  bool lstrip_blocks = true;
};

// Fails with InvalidArgument for unterminated tags, comments, strings or raw blocks.
StatusOr<std::vector<Token>> Tokenize(std::string_view source, const LexerOptions& options = {});

}  // namespace tandem::jinja
