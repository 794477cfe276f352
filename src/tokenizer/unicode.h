// Unicode character data for the tokenizer: general categories, White_Space, combining classes,
// normalization (NFC/NFD/NFKC/NFKD), lowercase, and UTF-8 helpers.
//
// Tables come from scripts/gen_unicode_tables.py (Python unicodedata) via unicode_tables.inc.
// All functions are pure and thread-safe; lookup tables are built once, on first use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tandem::unicode {

// General categories, in the order of scripts/gen_unicode_tables.py CATEGORIES.
enum Category : uint8_t {
  kCn, kLu, kLl, kLt, kLm, kLo, kMn, kMc, kMe, kNd, kNl, kNo, kPc, kPd, kPs, kPe, kPi, kPf, kPo,
  kSm, kSc, kSk, kSo, kZs, kZl, kZp, kCc, kCf, kCs, kCo,
  kCategoryCount
};

constexpr uint32_t kReplacementChar = 0xFFFD;

Category GetCategory(uint32_t cp);
bool IsWhitespace(uint32_t cp);  // Unicode White_Space (Rust char::is_whitespace, Oniguruma \s)
bool IsLetter(uint32_t cp);
bool IsNumber(uint32_t cp);
bool IsAlphanumeric(uint32_t cp);  // Rust char::is_alphanumeric: letters and numbers
uint8_t CombiningClass(uint32_t cp);

// Decodes one code point at s[*pos], advancing *pos. Invalid or truncated sequences decode to
// U+FFFD and advance by one byte.
uint32_t DecodeUtf8(std::string_view s, size_t* pos);
void AppendUtf8(uint32_t cp, std::string* out);
bool IsValidUtf8(std::string_view s);
// Length of the maximal prefix of a UTF-8 sequence starting at s[pos] (W3C "maximal subpart"),
// 0 if s[pos] cannot start one; sets *complete when it is a whole, valid sequence.
size_t Utf8SubpartLength(std::string_view s, size_t pos, bool* complete);
// String::from_utf8_lossy: each maximal invalid subpart becomes one U+FFFD.
std::string Utf8Lossy(std::string_view bytes);

enum class NormalizationForm { kNfc, kNfd, kNfkc, kNfkd };
std::string Normalize(std::string_view text, NormalizationForm form);
std::string Lowercase(std::string_view text);  // full lowercase mapping (Rust str::to_lowercase)

}  // namespace tandem::unicode
