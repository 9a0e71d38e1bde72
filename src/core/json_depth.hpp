// How deeply a JSON text nests objects and arrays, counted in one pass without parsing, so
// that hostile input is refused before anything recurses over it.
#pragma once

#include <cstddef>
#include <string_view>

namespace bunce {

// The deepest nesting of {} and [] outside strings; stops counting once past `limit`.
inline size_t json_depth(std::string_view text, size_t limit) {
    size_t depth = 0, deepest = 0;
    bool in_string = false;
    for (size_t i = 0; i < text.size(); i++) {
        const char c = text[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            if (++depth > deepest && (deepest = depth) > limit) break;
        } else if ((c == '}' || c == ']') && depth > 0) {
            depth--;
        }
    }
    return deepest;
}

}  // namespace bunce
