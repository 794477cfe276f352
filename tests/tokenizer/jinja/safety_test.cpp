// Untrusted templates must end with a clean error, never hang, crash or exhaust memory.
#include "tokenizer/jinja/template.h"

#include <gtest/gtest.h>

#include <string>

namespace tandem::jinja {
namespace {

Status RenderStatus(const std::string& source, const RenderLimits& limits = {}) {
  StatusOr<Template> tmpl = Template::Parse(source);
  if (!tmpl.ok()) return tmpl.status();
  StatusOr<std::string> out = tmpl->Render(ValueDict(), limits);
  return out.ok() ? OkStatus() : out.status();
}

TEST(SafetyTest, HugeRangeIsRefused) {
  Status s = RenderStatus("{% for i in range(10**9) %}x{% endfor %}");
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
  EXPECT_NE(s.message().find("MAX_RANGE"), std::string::npos) << s.ToString();
}

TEST(SafetyTest, NestedLoopsRunOutOfSteps) {
  RenderLimits limits;
  limits.max_steps = 200'000;
  Status s = RenderStatus(
      "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}"
      "{% endfor %}{% endfor %}{% endfor %}",
      limits);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
}

TEST(SafetyTest, SelfRecursiveMacroIsBounded) {
  Status s = RenderStatus("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
  EXPECT_NE(s.message().find("macro 'f'"), std::string::npos) << s.ToString();
}

TEST(SafetyTest, DoublingStringIsBounded) {
  Status s = RenderStatus(
      "{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}");
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
  EXPECT_EQ(RenderStatus("{{ 'x' * 1000000000 }}").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(RenderStatus("{{ [1] * 1000000000 }}").code(), StatusCode::kResourceExhausted);
}

TEST(SafetyTest, OutputIsBounded) {
  RenderLimits limits;
  limits.max_output_bytes = 1000;
  Status s = RenderStatus("{% for i in range(100000) %}xxxxxxxxxx{% endfor %}", limits);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
}

TEST(SafetyTest, DeepNestingIsASyntaxErrorNotAStackOverflow) {
  std::string deep = "{{ " + std::string(100000, '(') + "1" + std::string(100000, ')') + " }}";
  EXPECT_EQ(RenderStatus(deep).code(), StatusCode::kInvalidArgument);
  std::string deep_ifs;
  for (int i = 0; i < 5000; ++i) deep_ifs += "{% if true %}";
  EXPECT_EQ(RenderStatus(deep_ifs).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(RenderStatus("{{ " + std::string(100000, '-') + "1 }}").code(), StatusCode::kInvalidArgument);
}

TEST(SafetyTest, IntegerOverflowIsAnError) {
  EXPECT_EQ(RenderStatus("{{ 10 ** 100 }}").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(RenderStatus("{{ 99999999999999999999 }}").code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tandem::jinja
