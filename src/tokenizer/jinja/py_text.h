// Python str semantics over UTF-8 strings: code points, whitespace, case mapping, strip/split.
//
// Case mapping covers ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic (what chat messages
// need); other scripts are left unchanged.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tandem::jinja::py {

std::u32string Decode(std::string_view utf8);  // invalid bytes decode to U+FFFD
std::string Encode(std::u32string_view text);
void AppendUtf8(char32_t cp, std::string* out);
size_t CodePointCount(std::string_view utf8);
bool IsAscii(std::string_view s);

bool IsSpace(char32_t cp);  // str.isspace
std::string Upper(std::string_view s);
std::string Lower(std::string_view s);
std::string Capitalize(std::string_view s);  // str.capitalize
std::string Title(std::string_view s);       // jinja2's title filter

// str.strip/lstrip/rstrip; chars == nullptr strips whitespace.
std::string Strip(std::string_view s, const std::string* chars, bool left, bool right);
// str.split(sep=None | sep, maxsplit); sep empty -> ValueError.
std::vector<std::string> Split(std::string_view s, const std::string* sep, int64_t maxsplit);
// str.splitlines() (no keepends).
std::vector<std::string> SplitLines(std::string_view s);
std::string Replace(std::string_view s, std::string_view old_sub, std::string_view new_sub,
                    int64_t count);
int64_t Count(std::string_view s, std::string_view sub);

}  // namespace tandem::jinja::py
