#include "tokenizer/jinja/py_text.h"

#include "tokenizer/jinja/template_error.h"
#include "tokenizer/unicode.h"

namespace tandem::jinja::py {

// UTF-8 <-> code points: the tokenizer's Unicode helpers (invalid bytes become U+FFFD).
std::u32string Decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) out.push_back(static_cast<char32_t>(unicode::DecodeUtf8(s, &i)));
  return out;
}

void AppendUtf8(char32_t cp, std::string* out) { unicode::AppendUtf8(static_cast<uint32_t>(cp), out); }

std::string Encode(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t cp : text) AppendUtf8(cp, &out);
  return out;
}

bool IsAscii(std::string_view s) {
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

size_t CodePointCount(std::string_view s) {
  if (IsAscii(s)) return s.size();
  return Decode(s).size();
}

bool IsSpace(char32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x1F);
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

namespace {

// Simple (one-to-one) case pairs; returns cp when unmapped.
char32_t ToUpperCp(char32_t cp) {
  if (cp >= 'a' && cp <= 'z') return cp - 32;
  if (cp < 0x80) return cp;
  if (cp == 0xB5) return 0x39C;
  if (cp >= 0xE0 && cp <= 0xFE && cp != 0xF7) return cp - 32;
  if (cp == 0xFF) return 0x178;
  if (cp >= 0x100 && cp <= 0x17F) {
    if (cp == 0x131) return 'I';
    if (cp == 0x17F) return 'S';
    bool odd_lower = (cp <= 0x137) || (cp >= 0x14A && cp <= 0x177);
    bool even_lower = (cp >= 0x139 && cp <= 0x148) || (cp >= 0x179 && cp <= 0x17E);
    if (odd_lower && (cp & 1)) return cp - 1;
    if (even_lower && !(cp & 1)) return cp - 1;
    return cp;
  }
  if (cp >= 0x3B1 && cp <= 0x3C9 && cp != 0x3C2) return cp - 32;
  if (cp == 0x3C2) return 0x3A3;
  if (cp == 0x3AC) return 0x386;
  if (cp >= 0x3AD && cp <= 0x3AF) return cp - 37;
  if (cp == 0x3CC) return 0x38C;
  if (cp == 0x3CD || cp == 0x3CE) return cp - 63;
  if (cp == 0x3CA || cp == 0x3CB) return cp - 32;
  if (cp >= 0x430 && cp <= 0x44F) return cp - 32;
  if (cp >= 0x450 && cp <= 0x45F) return cp - 80;
  return cp;
}

char32_t ToLowerCp(char32_t cp) {
  if (cp >= 'A' && cp <= 'Z') return cp + 32;
  if (cp < 0x80) return cp;
  if (cp >= 0xC0 && cp <= 0xDE && cp != 0xD7) return cp + 32;
  if (cp == 0x178) return 0xFF;
  if (cp >= 0x100 && cp <= 0x17F) {
    if (cp == 0x130) return 'i';
    bool even_upper = (cp <= 0x137) || (cp >= 0x14A && cp <= 0x177);
    bool odd_upper = (cp >= 0x139 && cp <= 0x148) || (cp >= 0x179 && cp <= 0x17E);
    if (even_upper && !(cp & 1)) return cp + 1;
    if (odd_upper && (cp & 1)) return cp + 1;
    return cp;
  }
  if (cp >= 0x391 && cp <= 0x3A9 && cp != 0x3A2) return cp + 32;
  if (cp == 0x386) return 0x3AC;
  if (cp >= 0x388 && cp <= 0x38A) return cp + 37;
  if (cp == 0x38C) return 0x3CC;
  if (cp == 0x38E || cp == 0x38F) return cp + 63;
  if (cp == 0x3AA || cp == 0x3AB) return cp + 32;
  if (cp >= 0x410 && cp <= 0x42F) return cp + 32;
  if (cp >= 0x400 && cp <= 0x40F) return cp + 80;
  return cp;
}

void AppendUpper(char32_t cp, std::u32string* out) {
  if (cp == 0xDF) {  // ß -> SS
    out->append(U"SS");
    return;
  }
  out->push_back(ToUpperCp(cp));
}

bool IsCased(char32_t cp) { return ToUpperCp(cp) != cp || ToLowerCp(cp) != cp || cp == 0xDF; }

}  // namespace

std::string Upper(std::string_view s) {
  if (IsAscii(s)) {
    std::string out(s);
    for (char& c : out) {
      if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
    }
    return out;
  }
  std::u32string out;
  for (char32_t cp : Decode(s)) AppendUpper(cp, &out);
  return Encode(out);
}

std::string Lower(std::string_view s) {
  if (IsAscii(s)) {
    std::string out(s);
    for (char& c : out) {
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
    }
    return out;
  }
  std::u32string text = Decode(s);
  std::u32string out;
  for (size_t i = 0; i < text.size(); ++i) {
    char32_t cp = text[i];
    if (cp == 0x3A3) {  // final sigma: preceded by a cased letter and not followed by one
      bool before = i > 0 && IsCased(text[i - 1]);
      bool after = i + 1 < text.size() && IsCased(text[i + 1]);
      out.push_back(before && !after ? 0x3C2 : 0x3C3);
      continue;
    }
    out.push_back(ToLowerCp(cp));
  }
  return Encode(out);
}

std::string Capitalize(std::string_view s) {
  std::u32string text = Decode(s);
  std::u32string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (i == 0) {
      AppendUpper(text[i], &out);
    } else {
      out.push_back(ToLowerCp(text[i]));
    }
  }
  return Encode(out);
}

std::string Title(std::string_view s) {
  // jinja2: re.split(r"([-\s({\[<]+)") then item[0].upper() + item[1:].lower() per piece.
  std::u32string text = Decode(s);
  std::u32string out;
  auto is_sep = [](char32_t c) {
    return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || IsSpace(c);
  };
  bool word_start = true;
  for (char32_t cp : text) {
    if (is_sep(cp)) {
      out.push_back(cp);
      word_start = true;
    } else if (word_start) {
      AppendUpper(cp, &out);
      word_start = false;
    } else {
      out.push_back(ToLowerCp(cp));
    }
  }
  return Encode(out);
}

std::string Strip(std::string_view s, const std::string* chars, bool left, bool right) {
  std::u32string text = Decode(s);
  std::u32string set = chars ? Decode(*chars) : std::u32string();
  auto strip_it = [&](char32_t cp) {
    return chars ? set.find(cp) != std::u32string::npos : IsSpace(cp);
  };
  size_t b = 0, e = text.size();
  if (left) {
    while (b < e && strip_it(text[b])) ++b;
  }
  if (right) {
    while (e > b && strip_it(text[e - 1])) --e;
  }
  return Encode(std::u32string_view(text).substr(b, e - b));
}

std::vector<std::string> Split(std::string_view s, const std::string* sep, int64_t maxsplit) {
  std::vector<std::string> parts;
  if (sep != nullptr) {
    if (sep->empty()) ThrowTypeError("empty separator");
    size_t start = 0;
    while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
      size_t at = s.find(*sep, start);
      if (at == std::string_view::npos) break;
      parts.emplace_back(s.substr(start, at - start));
      start = at + sep->size();
    }
    parts.emplace_back(s.substr(start));
    return parts;
  }
  std::u32string text = Decode(s);
  size_t i = 0;
  while (true) {
    while (i < text.size() && IsSpace(text[i])) ++i;
    if (i >= text.size()) break;
    if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) >= maxsplit) {
      parts.push_back(Encode(std::u32string_view(text).substr(i)));  // the rest, as Python keeps it
      break;
    }
    size_t b = i;
    while (i < text.size() && !IsSpace(text[i])) ++i;
    parts.push_back(Encode(std::u32string_view(text).substr(b, i - b)));
  }
  return parts;
}

std::vector<std::string> SplitLines(std::string_view s) {
  std::u32string text = Decode(s);
  std::vector<std::string> lines;
  std::u32string cur;
  for (size_t i = 0; i < text.size(); ++i) {
    char32_t c = text[i];
    bool brk = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D ||
               c == 0x1E || c == 0x85 || c == 0x2028 || c == 0x2029;
    if (!brk) {
      cur.push_back(c);
      continue;
    }
    if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
    lines.push_back(Encode(cur));
    cur.clear();
  }
  if (!cur.empty()) lines.push_back(Encode(cur));
  return lines;
}

std::string Replace(std::string_view s, std::string_view old_sub, std::string_view new_sub,
                    int64_t count) {
  std::string out;
  if (old_sub.empty()) {
    // Python inserts new_sub between every code point (and at both ends).
    std::u32string text = Decode(s);
    int64_t done = 0;
    for (size_t i = 0; i <= text.size(); ++i) {
      if (count < 0 || done < count) {
        out.append(new_sub);
        ++done;
      }
      if (i < text.size()) AppendUtf8(text[i], &out);
    }
    return out;
  }
  size_t start = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t at = s.find(old_sub, start);
    if (at == std::string_view::npos) break;
    out.append(s.substr(start, at - start));
    out.append(new_sub);
    start = at + old_sub.size();
    ++done;
  }
  out.append(s.substr(start));
  return out;
}

int64_t Count(std::string_view s, std::string_view sub) {
  if (sub.empty()) return static_cast<int64_t>(CodePointCount(s)) + 1;
  int64_t n = 0;
  size_t start = 0;
  while (true) {
    size_t at = s.find(sub, start);
    if (at == std::string_view::npos) break;
    ++n;
    start = at + sub.size();
  }
  return n;
}

}  // namespace tandem::jinja::py
