#include "mapping.hpp"

#include <nlohmann/json.hpp>

#include "errors.hpp"
#include "json_depth.hpp"

namespace bunce {

namespace {

const char *kHint =
    "The mapping is a JSON object from payload keys to column names, with nested objects "
    "for \"customer\", e.g. '{\"email\": \"customer_email\", \"amount\": \"total\"}'.";

void flatten(const nlohmann::json &object, const std::string &where, std::vector<MappingItem> &out) {
    if (object.empty()) throw InvalidMapping("mapping " + where + " is empty", kHint);
    for (auto it = object.begin(); it != object.end(); ++it) {
        if (it->is_string()) {
            if (it->get_ref<const std::string &>().empty())
                throw InvalidMapping("mapping key \"" + it.key() + "\" names no column", kHint);
            out.push_back({MappingItem::field, it.key(), it->get<std::string>()});
        } else if (it->is_object()) {
            out.push_back({MappingItem::begin_object, it.key(), {}});
            flatten(*it, "object \"" + it.key() + "\"", out);
            out.push_back({MappingItem::end_object, {}, {}});
        } else {
            throw InvalidMapping("mapping key \"" + it.key() + "\" must name a column (a string) or be an object",
                                 kHint);
        }
    }
}

}  // namespace

std::vector<MappingItem> parse_mapping(std::string_view text) {
    if (json_depth(text, kMaxMappingDepth) > kMaxMappingDepth)
        throw InvalidMapping("mapping is nested deeper than " + std::to_string(kMaxMappingDepth) + " levels", kHint);
    auto mapping = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (mapping.is_discarded()) throw InvalidMapping("mapping is not valid JSON", kHint);
    if (!mapping.is_object()) throw InvalidMapping("mapping must be a JSON object", kHint);
    std::vector<MappingItem> items;
    flatten(mapping, "object", items);
    return items;
}

}  // namespace bunce
