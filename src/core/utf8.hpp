// Reading UTF-8 one code point at a time, strictly: no overlong forms, no surrogates, nothing
// past U+10FFFF.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace bunce {

// The code point of the multi-byte sequence at s[i], advancing i past it; 0 (i unchanged)
// when s[i] does not start well-formed UTF-8 of two to four bytes.
inline uint32_t utf8_next(std::string_view s, size_t &i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const int n = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xC2 && c <= 0xDF ? 2 : 0;
    if (n == 0 || i + n > s.size()) return 0;
    uint32_t cp = c & (0x7F >> n);
    for (int k = 1; k < n; k++) {
        const unsigned char cc = static_cast<unsigned char>(s[i + k]);
        if ((cc & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    i += n;
    return cp;
}

}  // namespace bunce
