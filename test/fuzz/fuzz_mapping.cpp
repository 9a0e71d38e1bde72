// bunce::parse_mapping on arbitrary text: only InvalidMapping, and an accepted mapping is
// well-formed: objects open and close in pairs, every field names a column, and at least one
// field (an empty object is refused).
#include <cstdint>
#include <string>

#include "errors.hpp"
#include "fuzz_check.hpp"
#include "mapping.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const std::string_view text(reinterpret_cast<const char *>(data), size);
    std::vector<bunce::MappingItem> items;
    try {
        items = bunce::parse_mapping(text);
    } catch (const bunce::InvalidMapping &) {
        return 0;
    }
    FUZZ_CHECK(!items.empty(), "an accepted mapping with no items");
    int depth = 0;
    bool last_was_begin = false;
    for (const auto &item : items) {
        switch (item.kind) {
            case bunce::MappingItem::field:
                FUZZ_CHECK(!item.column.empty(), "a field that names no column");
                break;
            case bunce::MappingItem::begin_object:
                depth++;
                break;
            case bunce::MappingItem::end_object:
                FUZZ_CHECK(!last_was_begin, "an empty nested object accepted");
                FUZZ_CHECK(--depth >= 0, "end_object without begin_object");
                FUZZ_CHECK(item.key.empty() && item.column.empty(), "end_object with a key");
                break;
        }
        last_was_begin = item.kind == bunce::MappingItem::begin_object;
    }
    FUZZ_CHECK(depth == 0, "begin_object without end_object");
    return 0;
}
