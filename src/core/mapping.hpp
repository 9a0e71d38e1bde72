// The column mapping of the generic trigger: TG_ARGV[1] of bunce_trigger(), e.g.
// {"email": "customer_email", "amount": "total", "customer": {"customer_id": "cust_id"}}.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace bunce {

// The mapping flattened into the order the payload is written: a field takes one column's
// value; begin/end bracket a nested object such as "customer".
struct MappingItem {
    enum Kind { field, begin_object, end_object } kind;
    std::string key;     // payload key (empty for end_object)
    std::string column;  // column name (field only)
};

// A payload needs two levels (the payload, its "customer"); deeper mappings are refused
// before anything recurses over them.
constexpr size_t kMaxMappingDepth = 8;

// Throws InvalidMapping for anything but an object whose values are column names or
// nested objects of the same kind.
std::vector<MappingItem> parse_mapping(std::string_view text);

}  // namespace bunce
