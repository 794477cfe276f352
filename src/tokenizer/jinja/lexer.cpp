#include "tokenizer/jinja/lexer.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <stdexcept>

#include "tokenizer/jinja/py_text.h"

namespace tandem::jinja {
namespace {

bool IsAsciiSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsNameStart(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || static_cast<unsigned char>(c) >= 0x80;
}
bool IsNameChar(char c) { return IsNameStart(c) || IsDigit(c); }

// Python str.rstrip() of template text (Unicode whitespace).
std::string RStripWhitespace(std::string_view text) {
  return py::Strip(text, nullptr, /*left=*/false, /*right=*/true);
}

bool AllWhitespace(std::string_view text) {
  if (text.empty()) return false;
  for (char32_t cp : py::Decode(text)) {
    if (!py::IsSpace(cp)) return false;
  }
  return true;
}

// jinja2: unicode-escape decoding of a string literal's body.
std::string DecodeStringLiteral(std::string_view body) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    char c = body[i];
    if (c != '\\' || i + 1 >= body.size()) {
      out.push_back(c);
      continue;
    }
    char e = body[++i];
    auto hex = [&](size_t digits) -> bool {
      uint32_t cp = 0;
      for (size_t k = 1; k <= digits; ++k) {
        if (i + k >= body.size()) return false;
        char h = body[i + k];
        int v = IsDigit(h) ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10 : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
        if (v < 0) return false;
        cp = cp * 16 + v;
      }
      py::AppendUtf8(cp, &out);
      i += digits;
      return true;
    };
    switch (e) {
      case '\n': break;
      case '\\': out.push_back('\\'); break;
      case '\'': out.push_back('\''); break;
      case '"': out.push_back('"'); break;
      case 'a': out.push_back('\a'); break;
      case 'b': out.push_back('\b'); break;
      case 'f': out.push_back('\f'); break;
      case 'n': out.push_back('\n'); break;
      case 'r': out.push_back('\r'); break;
      case 't': out.push_back('\t'); break;
      case 'v': out.push_back('\v'); break;
      case 'x':
        if (!hex(2)) throw std::invalid_argument("truncated \\xXX escape");
        break;
      case 'u':
        if (!hex(4)) throw std::invalid_argument("truncated \\uXXXX escape");
        break;
      case 'U':
        if (!hex(8)) throw std::invalid_argument("truncated \\UXXXXXXXX escape");
        break;
      default:
        if (e >= '0' && e <= '7') {
          uint32_t cp = e - '0';
          for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7'; ++k) {
            cp = cp * 8 + (body[++i] - '0');
          }
          py::AppendUtf8(cp, &out);
        } else {
          out.push_back('\\');
          out.push_back(e);
        }
    }
  }
  return out;
}

constexpr std::array<std::string_view, 6> kTwoCharOperators = {"//", "**", "==", "!=", ">=", "<="};
constexpr std::string_view kOneCharOperators = "+-/*%~[](){}><=.:|,;";

class Lexer {
 public:
  Lexer(std::string source, const LexerOptions& options) : src_(std::move(source)), options_(options) {}

  StatusOr<std::vector<Token>> Run() {
    try {
      Root();
    } catch (const std::invalid_argument& e) {
      return InvalidArgumentError("template syntax error at line " + std::to_string(line_) + ": " + e.what());
    }
    tokens_.push_back({TokenType::kEof, "", line_});
    return std::move(tokens_);
  }

 private:
  void Advance(size_t to) {
    line_ += static_cast<int>(std::count(src_.begin() + pos_, src_.begin() + to, '\n'));
    pos_ = to;
  }

  void EmitData(std::string text, int line) {
    if (!text.empty()) tokens_.push_back({TokenType::kData, std::move(text), line});
  }

  // Applies `-` / lstrip_blocks to the text before a tag, as jinja2's OptionalLStrip does.
  std::string StripBefore(std::string text, char sign, bool is_variable) const {
    if (sign == '-') return RStripWhitespace(text);
    if (sign != '+' && options_.lstrip_blocks && !is_variable) {
      size_t l_pos = text.rfind('\n');
      l_pos = l_pos == std::string::npos ? 0 : l_pos + 1;
      if ((l_pos > 0 || line_starting_) && AllWhitespace(std::string_view(text).substr(l_pos))) {
        text.resize(l_pos);
      }
    }
    return text;
  }

  size_t SkipSpace(size_t p) const {
    while (p < src_.size() && IsAsciiSpace(src_[p])) ++p;
    return p;
  }

  void Root() {
    while (pos_ < src_.size()) {
      size_t idx = std::string::npos;
      for (size_t p = src_.find('{', pos_); p != std::string::npos && p + 1 < src_.size();
           p = src_.find('{', p + 1)) {
        char next = src_[p + 1];
        if (next == '{' || next == '%' || next == '#') {
          idx = p;
          break;
        }
      }
      if (idx == std::string::npos) {
        EmitData(src_.substr(pos_), line_);
        Advance(src_.size());
        return;
      }
      char kind = src_[idx + 1];
      char sign = idx + 2 < src_.size() && (src_[idx + 2] == '-' || src_[idx + 2] == '+') ? src_[idx + 2] : 0;
      size_t after_open = idx + 2 + (sign ? 1 : 0);
      std::string text = src_.substr(pos_, idx - pos_);
      int text_line = line_;
      // {% raw %} ... {% endraw %}
      size_t raw_content = std::string::npos;
      if (kind == '%') {
        size_t p = SkipSpace(after_open);
        if (src_.compare(p, 3, "raw") == 0) {
          p = SkipSpace(p + 3);
          if (src_.compare(p, 3, "-%}") == 0) {
            raw_content = SkipSpace(p + 3);
          } else if (src_.compare(p, 2, "%}") == 0) {
            raw_content = p + 2;
          }
        }
      }
      EmitData(StripBefore(std::move(text), sign, kind == '{'), text_line);
      Advance(idx);
      if (raw_content != std::string::npos) {
        Raw(raw_content);
      } else if (kind == '#') {
        Comment(after_open);
      } else {
        Tag(kind == '{', after_open);
      }
    }
  }

  void Comment(size_t start) {
    size_t end = src_.find("#}", start);
    if (end == std::string::npos) throw std::invalid_argument("missing end of comment tag '#}'");
    char sign = end > start && (src_[end - 1] == '-' || src_[end - 1] == '+') ? src_[end - 1] : 0;
    size_t stop = end + 2;
    if (sign == '-') {
      stop = SkipSpace(stop);
    } else if (sign != '+' && options_.trim_blocks && stop < src_.size() && src_[stop] == '\n') {
      ++stop;
    }
    line_starting_ = src_[stop - 1] == '\n';
    Advance(stop);
  }

  void Raw(size_t content_start) {
    line_starting_ = src_[content_start - 1] == '\n';
    Advance(content_start);
    for (size_t p = src_.find("{%", content_start); p != std::string::npos; p = src_.find("{%", p + 1)) {
      size_t q = p + 2;
      char sign = q < src_.size() && (src_[q] == '-' || src_[q] == '+') ? src_[q] : 0;
      if (sign) ++q;
      q = SkipSpace(q);
      if (src_.compare(q, 6, "endraw") != 0) continue;
      q = SkipSpace(q + 6);
      size_t stop;
      if (src_.compare(q, 3, "+%}") == 0) {
        stop = q + 3;
      } else if (src_.compare(q, 3, "-%}") == 0) {
        stop = SkipSpace(q + 3);
      } else if (src_.compare(q, 2, "%}") == 0) {
        stop = q + 2;
        if (options_.trim_blocks && stop < src_.size() && src_[stop] == '\n') ++stop;
      } else {
        continue;
      }
      EmitData(StripBefore(src_.substr(content_start, p - content_start), sign, false), line_);
      line_starting_ = src_[stop - 1] == '\n';
      Advance(stop);
      return;
    }
    throw std::invalid_argument("missing '{% endraw %}' for '{% raw %}'");
  }

  void Tag(bool is_variable, size_t start) {
    tokens_.push_back({is_variable ? TokenType::kVariableBegin : TokenType::kBlockBegin, "", line_});
    Advance(start);
    std::vector<char> balancing;
    while (true) {
      if (pos_ >= src_.size()) {
        throw std::invalid_argument(is_variable ? "unexpected end of template, expected '}}'"
                                                : "unexpected end of template, expected '%}'");
      }
      if (balancing.empty() && TryTagEnd(is_variable)) return;
      char c = src_[pos_];
      if (IsAsciiSpace(c)) {
        Advance(pos_ + 1);
        continue;
      }
      if (IsDigit(c)) {
        Number();
        continue;
      }
      if (IsNameStart(c)) {
        size_t e = pos_;
        while (e < src_.size() && IsNameChar(src_[e])) ++e;
        tokens_.push_back({TokenType::kName, src_.substr(pos_, e - pos_), line_});
        Advance(e);
        continue;
      }
      if (c == '\'' || c == '"') {
        String(c);
        continue;
      }
      std::string op;
      for (std::string_view two : kTwoCharOperators) {
        if (src_.compare(pos_, 2, two) == 0) op = two;
      }
      if (op.empty() && kOneCharOperators.find(c) != std::string_view::npos) op = std::string(1, c);
      if (op.empty()) throw std::invalid_argument(std::string("unexpected character '") + c + "'");
      if (op == "(" || op == "[" || op == "{") {
        balancing.push_back(op == "(" ? ')' : op == "[" ? ']' : '}');
      } else if (op == ")" || op == "]" || op == "}") {
        if (balancing.empty() || balancing.back() != op[0]) {
          throw std::invalid_argument("unexpected '" + op + "'");
        }
        balancing.pop_back();
      }
      tokens_.push_back({TokenType::kOperator, op, line_});
      Advance(pos_ + op.size());
    }
  }

  bool TryTagEnd(bool is_variable) {
    std::string_view close = is_variable ? "}}" : "%}";
    size_t stop;
    if (src_.compare(pos_, 1, "-") == 0 && src_.compare(pos_ + 1, 2, close) == 0) {
      stop = SkipSpace(pos_ + 3);
    } else if (!is_variable && src_.compare(pos_, 3, "+%}") == 0) {
      stop = pos_ + 3;
    } else if (src_.compare(pos_, 2, close) == 0) {
      stop = pos_ + 2;
      if (!is_variable && options_.trim_blocks && stop < src_.size() && src_[stop] == '\n') ++stop;
    } else {
      return false;
    }
    tokens_.push_back({is_variable ? TokenType::kVariableEnd : TokenType::kBlockEnd, "", line_});
    line_starting_ = src_[stop - 1] == '\n';
    Advance(stop);
    return true;
  }

  void Number() {
    size_t p = pos_;
    auto digits = [&](size_t q) {
      size_t s = q;
      while (q < src_.size() && (IsDigit(src_[q]) || (src_[q] == '_' && q > s && q + 1 < src_.size() && IsDigit(src_[q + 1])))) ++q;
      return q;
    };
    // Base prefixes.
    if (src_[p] == '0' && p + 1 < src_.size() && std::string_view("xXoObB").find(src_[p + 1]) != std::string_view::npos) {
      size_t q = p + 2;
      while (q < src_.size() && (std::isxdigit(static_cast<unsigned char>(src_[q])) || src_[q] == '_')) ++q;
      std::string text = src_.substr(p, q - p);
      text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
      tokens_.push_back({TokenType::kInteger, text, line_});
      Advance(q);
      return;
    }
    size_t q = digits(p);
    bool is_float = false;
    bool after_dot = pos_ > 0 && src_[pos_ - 1] == '.';  // (?<!\.): `x.0.1` is attribute access
    if (!after_dot && q + 1 < src_.size() && src_[q] == '.' && IsDigit(src_[q + 1])) {
      q = digits(q + 1);
      is_float = true;
    }
    if (!after_dot && q < src_.size() && (src_[q] == 'e' || src_[q] == 'E')) {
      size_t r = q + 1;
      if (r < src_.size() && (src_[r] == '+' || src_[r] == '-')) ++r;
      if (r < src_.size() && IsDigit(src_[r])) {
        q = digits(r);
        is_float = true;
      }
    }
    std::string text = src_.substr(p, q - p);
    text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
    tokens_.push_back({is_float ? TokenType::kFloat : TokenType::kInteger, text, line_});
    Advance(q);
  }

  void String(char quote) {
    size_t p = pos_ + 1;
    while (p < src_.size() && src_[p] != quote) {
      if (src_[p] == '\\') ++p;
      ++p;
    }
    if (p >= src_.size()) throw std::invalid_argument("unterminated string literal");
    std::string body = src_.substr(pos_ + 1, p - pos_ - 1);
    tokens_.push_back({TokenType::kString, DecodeStringLiteral(body), line_});
    Advance(p + 1);
  }

  std::string src_;
  LexerOptions options_;
  size_t pos_ = 0;
  int line_ = 1;
  bool line_starting_ = true;
  std::vector<Token> tokens_;
};

// jinja2 normalizes \r\n and \r to \n and drops one trailing newline (keep_trailing_newline=False).
std::string NormalizeSource(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out.push_back(source[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

StatusOr<std::vector<Token>> Tokenize(std::string_view source, const LexerOptions& options) {
  return Lexer(NormalizeSource(source), options).Run();
}

}  // namespace tandem::jinja
