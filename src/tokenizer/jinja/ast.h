// AST of a parsed Jinja template: expressions and statements, as jinja2's parser builds them.
// Nodes are immutable after parsing and owned by their parent through unique_ptr.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja/value.h"

namespace tandem::jinja {

struct Expr;
struct Stmt;
using ExprPtr = std::unique_ptr<Expr>;
using StmtPtr = std::unique_ptr<Stmt>;
using StmtList = std::vector<StmtPtr>;

enum class ExprKind {
  kConst,     // constant
  kName,      // name
  kList,      // children
  kTuple,     // children
  kDict,      // children: key0, value0, key1, value1, ...
  kGetAttr,   // children[0].name
  kGetItem,   // children[0][children[1]]
  kSlice,     // children[0][children[1]:children[2]:children[3]] (null parts omitted)
  kCall,      // children[0](children[1..], keywords)
  kFilter,    // children[0] | name(children[1..], keywords); children[0] null in {% filter %}
  kTest,      // children[0] is [not] name(children[1..], keywords)
  kNot,       // not children[0]
  kNeg,       // -children[0]
  kPos,       // +children[0]
  kBinary,    // children[0] op children[1]: + - * / // % ** ~
  kAnd,       // children[0] and children[1]
  kOr,        // children[0] or children[1]
  kCompare,   // children[0] ops[0] children[1] ops[1] children[2] ...
  kCondExpr,  // children[1] if children[0] else children[2] (children[2] may be null)
};

struct Expr {
  ExprKind kind;
  int line = 0;
  Value constant;
  std::string name;  // name, attribute, filter/test name, binary operator
  std::vector<ExprPtr> children;
  std::vector<std::pair<std::string, ExprPtr>> keywords;
  std::vector<std::string> ops;  // kCompare: "==", "!=", "<", "<=", ">", ">=", "in", "notin"
  bool negated = false;          // kTest: `is not`
};

enum class StmtKind {
  kData,         // text
  kPrint,        // {{ expr }}
  kIf,           // if expr: body else: else_body (elif is a nested kIf in else_body)
  kFor,          // for targets in expr [if condition]: body else: else_body
  kSet,          // set targets = expr, or set targets[0].attribute = expr
  kSetBlock,     // set targets[0] [| filter] %} body {% endset
  kMacro,        // macro name(params) body
  kCallBlock,    // call(params) expr body
  kFilterBlock,  // filter expr(with null operand) body
  kBreak,
  kContinue,
  kBody,  // a plain body ({% generation %})
};

struct MacroParam {
  std::string name;
  ExprPtr default_value;  // null when required
};

struct Stmt {
  StmtKind kind;
  int line = 0;
  std::string text;       // kData text; kMacro name
  std::string attribute;  // kSet on a namespace attribute
  ExprPtr expr;
  ExprPtr condition;  // kFor filter; kSetBlock filter
  std::vector<std::string> targets;
  std::vector<MacroParam> params;
  StmtList body;
  StmtList else_body;
};

}  // namespace tandem::jinja
