#include "tokenizer/jinja/parser.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <initializer_list>
#include <string_view>

namespace tandem::jinja {
namespace {

class Parser {
 public:
  explicit Parser(const std::vector<Token>& tokens) : tokens_(tokens) {}

  StmtList ParseTemplate() {
    StmtList body = Subparse({});
    if (Cur().type != TokenType::kEof) Fail("unexpected '" + Cur().value + "'");
    return body;
  }

 private:
  // --- token stream -------------------------------------------------------------------------
  const Token& Cur() const { return tokens_[pos_]; }
  const Token& Peek() const { return tokens_[std::min(pos_ + 1, tokens_.size() - 1)]; }
  void Next() {
    if (pos_ + 1 < tokens_.size()) ++pos_;
  }
  bool IsOp(std::string_view op) const { return Cur().type == TokenType::kOperator && Cur().value == op; }
  bool IsName(std::string_view name) const { return Cur().type == TokenType::kName && Cur().value == name; }
  bool SkipOp(std::string_view op) {
    if (!IsOp(op)) return false;
    Next();
    return true;
  }
  bool SkipName(std::string_view name) {
    if (!IsName(name)) return false;
    Next();
    return true;
  }
  static std::string Describe(const Token& t) {
    switch (t.type) {
      case TokenType::kEof: return "end of template";
      case TokenType::kBlockEnd: return "end of statement block";
      case TokenType::kVariableEnd: return "end of print statement";
      case TokenType::kBlockBegin: return "begin of statement block";
      case TokenType::kVariableBegin: return "begin of print statement";
      case TokenType::kData: return "template data";
      case TokenType::kString: return "string";
      default: return "'" + t.value + "'";
    }
  }
  [[noreturn]] void Fail(const std::string& message) const {
    throw TemplateError(ErrorKind::kSyntax, message, Cur().line);
  }
  void ExpectOp(std::string_view op) {
    if (!SkipOp(op)) Fail("expected '" + std::string(op) + "', got " + Describe(Cur()));
  }
  void ExpectName(std::string_view name) {
    if (!SkipName(name)) Fail("expected '" + std::string(name) + "', got " + Describe(Cur()));
  }
  void ExpectBlockEnd() {
    if (Cur().type != TokenType::kBlockEnd) Fail("expected end of statement block, got " + Describe(Cur()));
    Next();
  }
  std::string ExpectIdentifier() {
    if (Cur().type != TokenType::kName) Fail("expected a name, got " + Describe(Cur()));
    std::string name = Cur().value;
    Next();
    return name;
  }

  struct DepthGuard {
    explicit DepthGuard(Parser* p) : parser(p) {
      if (++parser->depth_ > kMaxParseDepth) {
        parser->Fail("template nesting is deeper than " + std::to_string(kMaxParseDepth) + " levels");
      }
    }
    ~DepthGuard() { --parser->depth_; }
    Parser* parser;
  };

  ExprPtr MakeExpr(ExprKind kind, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    return e;
  }

  // --- statements ---------------------------------------------------------------------------
  // Parses until a {% name %} with name in `end_tokens`; leaves the stream on that name.
  StmtList Subparse(std::initializer_list<std::string_view> end_tokens) {
    DepthGuard guard(this);
    StmtList body;
    while (Cur().type != TokenType::kEof) {
      const Token& t = Cur();
      if (t.type == TokenType::kData) {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kData;
        s->line = t.line;
        s->text = t.value;
        body.push_back(std::move(s));
        Next();
      } else if (t.type == TokenType::kVariableBegin) {
        Next();
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kPrint;
        s->line = t.line;
        s->expr = ParseTuple(/*with_condexpr=*/true, {}, false);
        if (Cur().type != TokenType::kVariableEnd) Fail("expected end of print statement, got " + Describe(Cur()));
        Next();
        body.push_back(std::move(s));
      } else if (t.type == TokenType::kBlockBegin) {
        Next();
        if (Cur().type == TokenType::kName &&
            std::find(end_tokens.begin(), end_tokens.end(), Cur().value) != end_tokens.end()) {
          return body;
        }
        body.push_back(ParseStatement());
      } else {
        Fail("unexpected " + Describe(t));
      }
    }
    if (end_tokens.size() > 0) {
      std::string names;
      for (std::string_view n : end_tokens) names += (names.empty() ? "'" : " or '") + std::string(n) + "'";
      Fail("unexpected end of template: a block was not closed, expected " + names);
    }
    return body;
  }

  StmtPtr ParseStatement() {
    if (Cur().type != TokenType::kName) Fail("tag name expected, got " + Describe(Cur()));
    std::string tag = Cur().value;
    int line = Cur().line;
    Next();
    auto s = std::make_unique<Stmt>();
    s->line = line;
    if (tag == "if") {
      ParseIf(s.get());
    } else if (tag == "for") {
      ParseFor(s.get());
    } else if (tag == "set") {
      ParseSet(s.get());
    } else if (tag == "macro") {
      ParseMacro(s.get());
    } else if (tag == "call") {
      ParseCallBlock(s.get());
    } else if (tag == "filter") {
      s->kind = StmtKind::kFilterBlock;
      s->expr = ParseFilterChain(nullptr);
      ExpectBlockEnd();
      s->body = Subparse({"endfilter"});
      Next();
      ExpectBlockEnd();
    } else if (tag == "generation") {
      s->kind = StmtKind::kBody;
      ExpectBlockEnd();
      s->body = Subparse({"endgeneration"});
      Next();
      ExpectBlockEnd();
    } else if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) Fail("'" + tag + "' outside of a loop");
      s->kind = tag == "break" ? StmtKind::kBreak : StmtKind::kContinue;
      ExpectBlockEnd();
    } else {
      Fail("encountered unknown or unsupported tag '" + tag + "'");
    }
    return s;
  }

  void ParseIf(Stmt* s) {
    s->kind = StmtKind::kIf;
    s->expr = ParseTuple(/*with_condexpr=*/false, {}, false);
    ExpectBlockEnd();
    s->body = Subparse({"elif", "else", "endif"});
    std::string tag = Cur().value;
    int line = Cur().line;
    Next();
    if (tag == "elif") {
      auto nested = std::make_unique<Stmt>();
      nested->line = line;
      ParseIf(nested.get());
      s->else_body.push_back(std::move(nested));
      return;
    }
    if (tag == "else") {
      ExpectBlockEnd();
      s->else_body = Subparse({"endif"});
      Next();
    }
    ExpectBlockEnd();
  }

  std::vector<std::string> ParseTargets(std::string_view end_name) {
    std::vector<std::string> names;
    bool paren = SkipOp("(");
    while (true) {
      names.push_back(ExpectIdentifier());
      if (!SkipOp(",")) break;
      if ((paren && IsOp(")")) || (!paren && IsName(end_name))) break;
    }
    if (paren) ExpectOp(")");
    return names;
  }

  void ParseFor(Stmt* s) {
    s->kind = StmtKind::kFor;
    s->targets = ParseTargets("in");
    ExpectName("in");
    s->expr = ParseTuple(/*with_condexpr=*/false, {"recursive"}, false);
    if (SkipName("if")) s->condition = ParseExpression(true);
    if (IsName("recursive")) Fail("recursive for loops are not supported");
    ExpectBlockEnd();
    ++loop_depth_;
    s->body = Subparse({"endfor", "else"});
    --loop_depth_;
    if (SkipName("else")) {
      ExpectBlockEnd();
      s->else_body = Subparse({"endfor"});
    }
    Next();  // endfor
    ExpectBlockEnd();
  }

  void ParseSet(Stmt* s) {
    std::string first = ExpectIdentifier();
    if (SkipOp(".")) {
      s->attribute = ExpectIdentifier();
      s->targets.push_back(first);
    } else {
      s->targets.push_back(first);
      while (SkipOp(",")) {
        if (IsOp("=")) break;
        s->targets.push_back(ExpectIdentifier());
      }
    }
    if (SkipOp("=")) {
      s->kind = StmtKind::kSet;
      s->expr = ParseTuple(/*with_condexpr=*/true, {}, false);
      ExpectBlockEnd();
      return;
    }
    if (s->targets.size() != 1 || !s->attribute.empty()) Fail("block set takes a single name");
    s->kind = StmtKind::kSetBlock;
    if (IsOp("|")) s->condition = ParseFilterChain(nullptr, /*skip_first_pipe=*/true);
    ExpectBlockEnd();
    s->body = Subparse({"endset"});
    Next();
    ExpectBlockEnd();
  }

  void ParseParams(Stmt* s) {
    ExpectOp("(");
    while (!IsOp(")")) {
      if (!s->params.empty()) ExpectOp(",");
      if (IsOp(")")) break;
      MacroParam p;
      p.name = ExpectIdentifier();
      if (SkipOp("=")) {
        p.default_value = ParseExpression(true);
      } else if (!s->params.empty() && s->params.back().default_value) {
        Fail("non-default argument '" + p.name + "' follows default argument");
      }
      s->params.push_back(std::move(p));
    }
    ExpectOp(")");
  }

  void ParseMacro(Stmt* s) {
    s->kind = StmtKind::kMacro;
    s->text = ExpectIdentifier();
    ParseParams(s);
    ExpectBlockEnd();
    int saved_loop_depth = loop_depth_;
    loop_depth_ = 0;
    s->body = Subparse({"endmacro"});
    loop_depth_ = saved_loop_depth;
    Next();
    ExpectBlockEnd();
  }

  void ParseCallBlock(Stmt* s) {
    s->kind = StmtKind::kCallBlock;
    if (IsOp("(")) ParseParams(s);
    s->expr = ParseExpression(true);
    if (s->expr->kind != ExprKind::kCall) Fail("expected a call in {% call %}");
    ExpectBlockEnd();
    int saved_loop_depth = loop_depth_;
    loop_depth_ = 0;
    s->body = Subparse({"endcall"});
    loop_depth_ = saved_loop_depth;
    Next();
    ExpectBlockEnd();
  }

  // --- expressions --------------------------------------------------------------------------
  bool IsTupleEnd(std::initializer_list<std::string_view> extra_end) const {
    const Token& t = Cur();
    if (t.type == TokenType::kVariableEnd || t.type == TokenType::kBlockEnd || t.type == TokenType::kEof) return true;
    if (t.type == TokenType::kOperator && (t.value == ")" || t.value == "]" || t.value == "}")) return true;
    if (t.type == TokenType::kName) {
      for (std::string_view n : extra_end) {
        if (t.value == n) return true;
      }
    }
    return false;
  }

  ExprPtr ParseTuple(bool with_condexpr, std::initializer_list<std::string_view> extra_end,
                     bool explicit_parentheses) {
    int line = Cur().line;
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) ExpectOp(",");
      if (IsTupleEnd(extra_end)) break;
      items.push_back(ParseExpression(with_condexpr));
      if (IsOp(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parentheses) Fail("expected an expression, got " + Describe(Cur()));
    }
    auto e = MakeExpr(ExprKind::kTuple, line);
    e->children = std::move(items);
    return e;
  }

  ExprPtr ParseExpression(bool with_condexpr) {
    DepthGuard guard(this);
    if (!with_condexpr) return ParseOr();
    ExprPtr expr = ParseOr();
    while (IsName("if")) {
      int line = Cur().line;
      Next();
      ExprPtr cond = ParseOr();
      ExprPtr otherwise;
      if (SkipName("else")) otherwise = ParseExpression(true);
      auto e = MakeExpr(ExprKind::kCondExpr, line);
      e->children.push_back(std::move(cond));
      e->children.push_back(std::move(expr));
      e->children.push_back(std::move(otherwise));
      expr = std::move(e);
    }
    return expr;
  }

  ExprPtr Binary(ExprKind kind, std::string op, ExprPtr left, ExprPtr right, int line) {
    auto e = MakeExpr(kind, line);
    e->name = std::move(op);
    e->children.push_back(std::move(left));
    e->children.push_back(std::move(right));
    return e;
  }

  ExprPtr ParseOr() {
    ExprPtr left = ParseAnd();
    while (IsName("or")) {
      int line = Cur().line;
      Next();
      left = Binary(ExprKind::kOr, "or", std::move(left), ParseAnd(), line);
    }
    return left;
  }

  ExprPtr ParseAnd() {
    ExprPtr left = ParseNot();
    while (IsName("and")) {
      int line = Cur().line;
      Next();
      left = Binary(ExprKind::kAnd, "and", std::move(left), ParseNot(), line);
    }
    return left;
  }

  ExprPtr ParseNot() {
    if (IsName("not")) {
      DepthGuard guard(this);
      auto e = MakeExpr(ExprKind::kNot, Cur().line);
      Next();
      e->children.push_back(ParseNot());
      return e;
    }
    return ParseCompare();
  }

  ExprPtr ParseCompare() {
    int line = Cur().line;
    ExprPtr first = ParseMath1();
    ExprPtr node;
    while (true) {
      std::string op;
      if (Cur().type == TokenType::kOperator &&
          (Cur().value == "==" || Cur().value == "!=" || Cur().value == "<" || Cur().value == "<=" ||
           Cur().value == ">" || Cur().value == ">=")) {
        op = Cur().value;
        Next();
      } else if (IsName("in")) {
        op = "in";
        Next();
      } else if (IsName("not") && Peek().type == TokenType::kName && Peek().value == "in") {
        op = "notin";
        Next();
        Next();
      } else {
        break;
      }
      if (!node) {
        node = MakeExpr(ExprKind::kCompare, line);
        node->children.push_back(std::move(first));
      }
      node->ops.push_back(op);
      node->children.push_back(ParseMath1());
    }
    return node ? std::move(node) : std::move(first);
  }

  ExprPtr ParseMath1() {
    ExprPtr left = ParseConcat();
    while (IsOp("+") || IsOp("-")) {
      std::string op = Cur().value;
      int line = Cur().line;
      Next();
      left = Binary(ExprKind::kBinary, op, std::move(left), ParseConcat(), line);
    }
    return left;
  }

  ExprPtr ParseConcat() {
    ExprPtr left = ParseMath2();
    while (IsOp("~")) {
      int line = Cur().line;
      Next();
      left = Binary(ExprKind::kBinary, "~", std::move(left), ParseMath2(), line);
    }
    return left;
  }

  ExprPtr ParseMath2() {
    ExprPtr left = ParsePow();
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      std::string op = Cur().value;
      int line = Cur().line;
      Next();
      left = Binary(ExprKind::kBinary, op, std::move(left), ParsePow(), line);
    }
    return left;
  }

  ExprPtr ParsePow() {
    ExprPtr left = ParseUnary(true);
    while (IsOp("**")) {
      int line = Cur().line;
      Next();
      left = Binary(ExprKind::kBinary, "**", std::move(left), ParseUnary(true), line);
    }
    return left;
  }

  ExprPtr ParseUnary(bool with_filter) {
    DepthGuard guard(this);
    ExprPtr node;
    if (IsOp("-") || IsOp("+")) {
      auto e = MakeExpr(IsOp("-") ? ExprKind::kNeg : ExprKind::kPos, Cur().line);
      Next();
      e->children.push_back(ParseUnary(false));
      node = std::move(e);
    } else {
      node = ParsePrimary();
    }
    node = ParsePostfix(std::move(node));
    if (with_filter) node = ParseFilterExpr(std::move(node));
    return node;
  }

  ExprPtr ParsePrimary() {
    const Token& t = Cur();
    int line = t.line;
    if (t.type == TokenType::kName) {
      auto e = MakeExpr(ExprKind::kConst, line);
      if (t.value == "true" || t.value == "True") {
        e->constant = Value::Bool(true);
      } else if (t.value == "false" || t.value == "False") {
        e->constant = Value::Bool(false);
      } else if (t.value == "none" || t.value == "None") {
        e->constant = Value::None();
      } else {
        e->kind = ExprKind::kName;
        e->name = t.value;
      }
      Next();
      return e;
    }
    if (t.type == TokenType::kString) {
      std::string s;
      while (Cur().type == TokenType::kString) {
        s += Cur().value;
        Next();
      }
      auto e = MakeExpr(ExprKind::kConst, line);
      e->constant = Value::String(std::move(s));
      return e;
    }
    if (t.type == TokenType::kInteger) {
      auto e = MakeExpr(ExprKind::kConst, line);
      e->constant = Value::Int(ParseInteger(t.value));
      Next();
      return e;
    }
    if (t.type == TokenType::kFloat) {
      auto e = MakeExpr(ExprKind::kConst, line);
      e->constant = Value::Float(std::strtod(t.value.c_str(), nullptr));
      Next();
      return e;
    }
    if (SkipOp("(")) {
      ExprPtr e = ParseTuple(/*with_condexpr=*/true, {}, /*explicit_parentheses=*/true);
      ExpectOp(")");
      return e;
    }
    if (SkipOp("[")) {
      auto e = MakeExpr(ExprKind::kList, line);
      while (!IsOp("]")) {
        if (!e->children.empty()) ExpectOp(",");
        if (IsOp("]")) break;
        e->children.push_back(ParseExpression(true));
      }
      ExpectOp("]");
      return e;
    }
    if (SkipOp("{")) {
      auto e = MakeExpr(ExprKind::kDict, line);
      while (!IsOp("}")) {
        if (!e->children.empty()) ExpectOp(",");
        if (IsOp("}")) break;
        e->children.push_back(ParseExpression(true));
        ExpectOp(":");
        e->children.push_back(ParseExpression(true));
      }
      ExpectOp("}");
      return e;
    }
    Fail("unexpected " + Describe(t));
  }

  int64_t ParseInteger(const std::string& text) {
    int base = 10;
    std::string digits = text;
    if (text.size() > 2 && text[0] == '0') {
      char p = static_cast<char>(std::tolower(static_cast<unsigned char>(text[1])));
      if (p == 'x' || p == 'o' || p == 'b') {
        base = p == 'x' ? 16 : p == 'o' ? 8 : 2;
        digits = text.substr(2);
      }
    }
    errno = 0;
    char* end = nullptr;
    long long v = std::strtoll(digits.c_str(), &end, base);
    if (errno == ERANGE || end == digits.c_str() || *end != '\0') {
      Fail("integer literal " + text + " is out of range (at most 64-bit integers are supported)");
    }
    return v;
  }

  ExprPtr ParsePostfix(ExprPtr node) {
    while (true) {
      int line = Cur().line;
      if (SkipOp(".")) {
        if (Cur().type == TokenType::kName) {
          auto e = MakeExpr(ExprKind::kGetAttr, line);
          e->name = Cur().value;
          Next();
          e->children.push_back(std::move(node));
          node = std::move(e);
        } else if (Cur().type == TokenType::kInteger) {
          auto e = MakeExpr(ExprKind::kGetItem, line);
          auto index = MakeExpr(ExprKind::kConst, line);
          index->constant = Value::Int(ParseInteger(Cur().value));
          Next();
          e->children.push_back(std::move(node));
          e->children.push_back(std::move(index));
          node = std::move(e);
        } else {
          Fail("expected a name after '.', got " + Describe(Cur()));
        }
      } else if (SkipOp("[")) {
        node = ParseSubscript(std::move(node), line);
        ExpectOp("]");
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr ParseSubscript(ExprPtr target, int line) {
    ExprPtr parts[3];
    if (!IsOp(":")) {
      ExprPtr index = ParseExpression(true);
      if (!IsOp(":")) {
        if (IsOp(",")) Fail("tuple subscripts are not supported");
        auto e = MakeExpr(ExprKind::kGetItem, line);
        e->children.push_back(std::move(target));
        e->children.push_back(std::move(index));
        return e;
      }
      parts[0] = std::move(index);
    }
    ExpectOp(":");
    if (!IsOp(":") && !IsOp("]")) parts[1] = ParseExpression(true);
    if (SkipOp(":")) {
      if (!IsOp("]")) parts[2] = ParseExpression(true);
    }
    auto e = MakeExpr(ExprKind::kSlice, line);
    e->children.push_back(std::move(target));
    for (auto& p : parts) e->children.push_back(std::move(p));
    return e;
  }

  // Parses "(args)" into e->children (after any existing ones) and e->keywords.
  void ParseCallArgs(Expr* e) {
    ExpectOp("(");
    bool first = true;
    while (!IsOp(")")) {
      if (!first) ExpectOp(",");
      first = false;
      if (IsOp(")")) break;
      if (IsOp("*") || IsOp("**")) Fail("*args and **kwargs in calls are not supported");
      if (Cur().type == TokenType::kName && Peek().type == TokenType::kOperator && Peek().value == "=") {
        std::string key = Cur().value;
        Next();
        Next();
        e->keywords.emplace_back(key, ParseExpression(true));
      } else {
        if (!e->keywords.empty()) Fail("positional argument follows keyword argument");
        e->children.push_back(ParseExpression(true));
      }
    }
    ExpectOp(")");
  }

  ExprPtr ParseCall(ExprPtr callee) {
    auto e = MakeExpr(ExprKind::kCall, Cur().line);
    e->children.push_back(std::move(callee));
    ParseCallArgs(e.get());
    return e;
  }

  ExprPtr ParseFilterExpr(ExprPtr node) {
    while (true) {
      if (IsOp("|")) {
        node = ParseFilterChain(std::move(node), /*skip_first_pipe=*/true, /*single=*/true);
      } else if (IsName("is")) {
        node = ParseTest(std::move(node));
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  // name[(args)] [| name[(args)]]...; with `single`, parses one filter.
  ExprPtr ParseFilterChain(ExprPtr operand, bool skip_first_pipe = false, bool single = false) {
    bool first = true;
    while (true) {
      if (!first || skip_first_pipe) {
        if (!SkipOp("|")) break;
      }
      first = false;
      auto e = MakeExpr(ExprKind::kFilter, Cur().line);
      e->name = ExpectIdentifier();
      while (SkipOp(".")) e->name += "." + ExpectIdentifier();
      e->children.push_back(std::move(operand));
      if (IsOp("(")) ParseCallArgs(e.get());
      operand = std::move(e);
      if (single) break;
    }
    return operand;
  }

  ExprPtr ParseTest(ExprPtr node) {
    auto e = MakeExpr(ExprKind::kTest, Cur().line);
    Next();  // is
    if (SkipName("not")) e->negated = true;
    e->name = ExpectIdentifier();
    e->children.push_back(std::move(node));
    const Token& t = Cur();
    if (IsOp("(")) {
      ParseCallArgs(e.get());
    } else if ((t.type == TokenType::kName || t.type == TokenType::kString || t.type == TokenType::kInteger ||
                t.type == TokenType::kFloat || IsOp("[") || IsOp("{")) &&
               !(IsName("else") || IsName("or") || IsName("and"))) {
      if (IsName("is")) Fail("you cannot chain multiple tests with 'is'");
      e->children.push_back(ParsePostfix(ParsePrimary()));
    }
    return e;
  }

  const std::vector<Token>& tokens_;
  size_t pos_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

StmtList ParseTokens(const std::vector<Token>& tokens) { return Parser(tokens).ParseTemplate(); }

}  // namespace tandem::jinja
