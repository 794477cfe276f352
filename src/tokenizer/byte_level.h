// The GPT-2 byte-level alphabet: every byte maps to one printable code point (bytes 0x21-0x7E,
// 0xA1-0xAC, 0xAE-0xFF to themselves, the rest to U+0100 onwards), so byte strings can be vocabulary
// strings. Pure functions; no state.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tandem::byte_level {

uint32_t ByteToCodePoint(uint8_t byte);
// -1 if cp is not in the alphabet.
int CodePointToByte(uint32_t cp);

// "Ġhello" -> " hello"; nullopt if some character is outside the alphabet.
std::optional<std::string> ToBytes(std::string_view token);
// " hello" -> "Ġhello".
std::string FromBytes(std::string_view bytes);

}  // namespace tandem::byte_level
