// Focused semantics of the Jinja interpreter. Each row's expected output is what HF's jinja2
// environment (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols) renders.
#include "tokenizer/jinja/template.h"

#include <gtest/gtest.h>

#include <string>

namespace tandem::jinja {
namespace {

struct Case {
  const char* source;
  const char* context;  // JSON object
  const char* expected;
};

StatusOr<std::string> RenderWith(const std::string& source, const std::string& context_json) {
  TANDEM_ASSIGN_OR_RETURN(Template tmpl, Template::Parse(source));
  Value context = Value::FromJson(nlohmann::ordered_json::parse(context_json));
  return tmpl.Render(context.dict());
}

void ExpectRenders(const std::vector<Case>& cases) {
  for (const Case& c : cases) {
    StatusOr<std::string> out = RenderWith(c.source, c.context);
    ASSERT_TRUE(out.ok()) << c.source << "\n" << out.status().ToString();
    EXPECT_EQ(*out, c.expected) << "template: " << c.source;
  }
}

TEST(InterpreterTest, WhitespaceControl) {
  ExpectRenders({
      {R"J(a
  {% if true %}
  b
  {% endif %}
c)J", "{}", "a\n  b\nc"},
      {R"J({%- if true -%}  a  {%- endif -%}  |)J", "{}", "a|"},
      {R"J(  {%+ if true %}x{% endif %})J", "{}", "  x"},
      {"{# comment #}\n  {# c #}\nx", "{}", "x"},
      {"{% raw %}\n{{ x }}{% endraw %}", "{}", "\n{{ x }}"},
      {"{{ 'a' }}  {% if true %}b{% endif %}", "{}", "a  b"},
      {"x  {{- 'a' -}}  \n y", "{}", "xay"},
      {"{% for i in [1, 2] %}\n  {{ i }}\n{% endfor %}\n", "{}", "  1\n  2\n"},
      {"line\r\nnext\r\n", "{}", "line\nnext"},
      {"{% set x = 1 %}\n{{ x }}\n\n", "{}", "1\n"},
  });
}

TEST(InterpreterTest, PythonPrinting) {
  ExpectRenders({
      {"{{ 1.0 }} {{ 1e16 }} {{ 0.1 + 0.2 }} {{ none }} {{ true }}", "{}", "1.0 1e+16 0.30000000000000004 None True"},
      {"{{ [1, 'a', none, 1.5] }} {{ {'a': 1} }} {{ (1,) }}", "{}", "[1, 'a', None, 1.5] {'a': 1} (1,)"},
      {"{{ 1e-5 }} {{ 123456789012345678.0 }} {{ 1 / 3 }} {{ -0.0 }} {{ 1e100 }}", "{}",
       "1e-05 1.2345678901234568e+17 0.3333333333333333 -0.0 1e+100"},
      {"{{ x }} {{ y }}", R"({"x": 2.50, "y": [true, null, "it's"]})", "2.5 [True, None, \"it's\"]"},
      {"{{ 10 // 3 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 'ab' * 3 }}", "{}", "3 -4 2 3.5 1024 ababab"},
      {"{{ 'x' ~ 1 ~ none ~ missing }}", "{}", "x1None"},
      {"{{ 3.0|int }} {{ '3'|int + 1 }} {{ 2.5|round }} {{ 2.567|round(2) }} {{ -3|abs }}", "{}", "3 4 2.0 2.57 3"},
  });
}

TEST(InterpreterTest, Loops) {
  ExpectRenders({
      {"{% for i in [1,2,3] %}{{ loop.previtem }}-{{ loop.nextitem }}-{{ loop.cycle('a','b') }}-"
       "{{ loop.revindex }}{% if loop.last %}L{% endif %};{% endfor %}",
       "{}", "-2-a-3;1-3-b-2;2--a-1L;"},
      {"{% for i in [] %}x{% else %}empty{% endfor %}", "{}", "empty"},
      {"{% for i in range(10) if i is even %}{% if i > 5 %}{% break %}{% endif %}"
       "{% if i == 2 %}{% continue %}{% endif %}{{ i }}{{ loop.index }}{% endfor %}",
       "{}", "0143"},
      {"{% for a, b in {'x': 1, 'y': 2}.items() %}{{ a }}={{ b }}{{ loop.index }}/{{ loop.length }},{% endfor %}",
       "{}", "x=11/2,y=22/2,"},
      {"{% for i in range(3) %}{% if i == 0 %}{% set x = 'a' %}{% endif %}[{{ x }}]{% endfor %}", "{}", "[a][][]"},
      {"{% set x = 1 %}{% for i in range(2) %}{% set x = x + 1 %}{{ x }}{% endfor %}{{ x }}", "{}", "221"},
      {"{% set ns = namespace(a=1) %}{% for i in range(3) %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }}", "{}", "4"},
      {"{% for k in d %}{{ k }}{% endfor %}", R"({"d": {"z": 1, "a": 2}})", "za"},
  });
}

TEST(InterpreterTest, Macros) {
  ExpectRenders({
      {"{% macro f(a, b=2) %}{{ a }}{{ b }}{{ varargs }}{{ kwargs }}{% endmacro %}"
       "{{ f(1) }}|{{ f(1, b=3) }}|{{ f(1,2,3) }}|{{ f(1, c=4) }}",
       "{}", "12(){}|13(){}|12(3,){}|12(){'c': 4}"},
      {"{% macro f() %}{{ y }}{% endmacro %}{% set y = 2 %}{{ f() }}", "{}", "2"},
      {"{% macro f() %}{{ y }}{% endmacro %}{% for y in [5] %}{{ f() }}{% endfor %}", "{}", ""},
      {"{% macro f(a) %}{{ a }}{% endmacro %}{{ f() }}|", "{}", "|"},
      {"{% macro wrap() %}<{{ caller() }}>{% endmacro %}{% call wrap() %}in{% endcall %}", "{}", "<in>"},
      {"{% set x %}a{{ 1 }}{% endset %}{{ x }}", "{}", "a1"},
      {"{% filter upper %}ab{% endfilter %}", "{}", "AB"},
      {"{% generation %}gen{% endgeneration %}", "{}", "gen"},
  });
}

TEST(InterpreterTest, Filters) {
  ExpectRenders({
      {"{{ [3,1,2]|sort }} {{ ['b','A','a']|sort }} {{ [1,2,3]|sum }} {{ 'a b  c'.split() }} {{ 'a,b'.split(',') }}",
       "{}", "[1, 2, 3] ['A', 'a', 'b'] 6 ['a', 'b', 'c'] ['a', 'b']"},
      {"{{ [{'a':1},{'a':2}]|map(attribute='a')|list }} {{ [{'a':1},{'b':2}]|selectattr('a')|list }} "
       "{{ [1,2,3,4]|select('odd')|list }}",
       "{}", "[1, 2] [{'a': 1}] [1, 3]"},
      {"{{ {'b':1,'a':2}|dictsort }} {{ [1,2,3,4,5]|batch(2)|list }} {{ 'hello world'|title }} "
       "{{ 'hello World'|capitalize }}",
       "{}", "[('a', 2), ('b', 1)] [[1, 2], [3, 4], [5]] Hello World Hello world"},
      {R"J({{ 'x'|center(9) }}| {{ "a\nb"|indent(2) }} {{ "a\nb"|indent(2, true) }} {{ [1,1,2]|unique|list }})J", "{}",
       "    x    | a\n  b   a\n  b [1, 2]"},
      {R"J({{ {'a': [1, 2.0, none, true, "é\n\"x"]}|tojson }} {{ {'a': [1, {}], 'b': []}|tojson(indent=2) }})J", "{}",
       "{\"a\": [1, 2.0, null, true, \"é\\n\\\"x\"]} {\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}"},
      {"{{ 'abc'|list }} {{ {'a':1}|items|list }} {{ [1,2]|first }} {{ [1,2]|last }} {{ [1,2]|reverse|list }} "
       "{{ 'abc'|reverse }}",
       "{}", "['a', 'b', 'c'] [('a', 1)] 1 2 [2, 1] cba"},
      {"{{ missing|default('d') }} {{ ''|default('e', true) }} {{ 'héllo'|length }} {{ 'héllo'|upper }}", "{}",
       "d e 5 HÉLLO"},
      {"{{ msgs|selectattr('role', 'equalto', 'user')|map(attribute='content')|join(', ') }}",
       R"({"msgs": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}, {"role": "user", "content": "c"}]})",
       "a, c"},
      {"{{ ' x '|trim }}|{{ 'xxaxx'|trim('x') }}|{{ 'a-b'|replace('-', '+') }}|{{ '<b>'|e }}|{{ 'one two'|wordcount }}",
       "{}", "x|a|a+b|&lt;b&gt;|2"},
      {"{{ t|tojson }}", R"({"t": {"z": 1, "a": "ü"}})", "{\"z\": 1, \"a\": \"ü\"}"},
  });
}

TEST(InterpreterTest, ExpressionsAndMethods) {
  ExpectRenders({
      {"{{ 'abc'[1:] }} {{ [1,2,3][-1] }} {{ 'héllo'[1] }} {{ [1,2,3,4][::2] }} {{ 'abc'[5] }}|", "{}",
       "bc 3 é [1, 3] |"},
      {"{{ 'a' in 'abc' }} {{ 1 in [1,2] }} {{ 'a' in {'a':1} }} {{ 'a' not in [] }} {{ x in y }}", "{}",
       "True True True True False"},
      {"{{ 1 is defined }} {{ none is none }} {{ 'a' is string }} {{ {} is mapping }} {{ [] is iterable }} "
       "{{ 3 is divisibleby 3 }} {{ true is number }} {{ true is integer }} {{ x is not defined }}",
       "{}", "True True True True True True True False True"},
      {"{{ '%s-%d' % ('a', 3) }} {{ '{}-{}'.format(1, 'b') }} {{ '%s'|format(5) }}", "{}", "a-3 1-b 5"},
      {"{% set d = {'items': 1} %}{{ d['items'] }} {{ d.get('x', 'no') }} {{ d.keys()|list }}", "{}", "1 no ['items']"},
      {"{{ m.content }}{{ m['role'] }}{{ m.nope }}|{{ 1 if false }}|{{ 'y' if false else 'n' }}",
       R"({"m": {"role": "user", "content": "hi"}})", "hiuser||n"},
      {"{{ '  a b '.strip() }}|{{ 'ab'.startswith('a') }}|{{ 'ab'.endswith(('x', 'b')) }}|{{ 'aXb'.lower() }}", "{}",
       "a b|True|True|axb"},
      {"{{ [1] + [2] }} {{ (1, 2) + (3,) }} {{ 1 == 1.0 }} {{ true == 1 }} {{ 1 < 2 < 3 }}", "{}",
       "[1, 2] (1, 2, 3) True True True"},
      {"{{ not a and b or c }}", R"({"a": false, "b": 0, "c": "c"})", "c"},
      {"{{ -x|abs }} {{ (- x)|abs }} {{ 2 ** 3 ** 2 }}", R"({"x": -2})", "2 2 64"},
  });
}

void ExpectError(const std::string& source, const std::string& context, StatusCode code, const std::string& needle) {
  StatusOr<std::string> out = RenderWith(source, context);
  ASSERT_FALSE(out.ok()) << source << " rendered " << *out;
  EXPECT_EQ(out.status().code(), code) << source << ": " << out.status().ToString();
  EXPECT_NE(out.status().message().find(needle), std::string::npos) << source << ": " << out.status().ToString();
}

TEST(InterpreterTest, ErrorsLikeJinja2) {
  ExpectError("{{ raise_exception('no system role') }}", "{}", StatusCode::kInvalidArgument, "no system role");
  ExpectError("{{ foo.bar }}", "{}", StatusCode::kInvalidArgument, "'foo' is undefined");
  ExpectError("{% set m = {'a': 1} %}{{ m.b.c }}", "{}", StatusCode::kInvalidArgument,
              "'dict object' has no attribute 'b'");
  ExpectError("{% set x = [] %}{{ x.append(1) }}", "{}", StatusCode::kInvalidArgument,
              "access to attribute 'append' of 'list' object is unsafe.");
  ExpectError("{{ 'a' + 1 }}", "{}", StatusCode::kInvalidArgument, "can only concatenate str (not \"int\") to str");
  ExpectError("{{ 1 + 'a' }}", "{}", StatusCode::kInvalidArgument, "unsupported operand type(s) for +: 'int' and 'str'");
  ExpectError("{{ none|length }}", "{}", StatusCode::kInvalidArgument, "object of type 'NoneType' has no len()");
  ExpectError("{{ 1 // 0 }}", "{}", StatusCode::kInvalidArgument, "division or modulo by zero");
  ExpectError("\n\n{{ x.y }}", "{}", StatusCode::kInvalidArgument, "line 3");
  ExpectError("{{ x|nosuchfilter }}", "{}", StatusCode::kInvalidArgument, "nosuchfilter");
  EXPECT_EQ(Template::Parse("{% for x in y %}").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Template::Parse("{% break %}").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Template::Parse("{% do x %}").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Template::Parse("{{ 'unterminated }}").status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tandem::jinja
