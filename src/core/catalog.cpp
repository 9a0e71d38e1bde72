#include "catalog.hpp"

#include <cctype>
#include <stdexcept>
#include <unordered_set>

#include <nlohmann/json.hpp>

namespace bunce {

using nlohmann::json;

namespace {

[[noreturn]] void refuse(const std::string &what) { throw std::runtime_error("GET /events answered " + what); }

bool is_uuid(const std::string &s) {
    if (s.size() != 36) return false;
    for (size_t i = 0; i < s.size(); i++) {
        const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
    }
    return true;
}

std::string lower(std::string s) {
    for (char &c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

// A parameter as the checks at enqueue read it: a name, a known type (Bunce writes it in
// either case), and whether it is required.
void check_parameter(const json &p, size_t event) {
    const std::string where = "event " + std::to_string(event) + " of the page: a parameter ";
    if (!p.is_object()) refuse(where + "that is not an object");
    auto name = p.find("name");
    if (name == p.end() || !name->is_string() || name->get_ref<const std::string &>().empty())
        refuse(where + "without a name");
    auto type = p.find("type");
    if (type == p.end() || !type->is_string()) refuse(where + "without a type");
    const std::string t = lower(type->get<std::string>());
    if (t != "text" && t != "numeric" && t != "timestamp") refuse(where + "of an unknown type");
    auto required = p.find("required");
    if (required != p.end() && !required->is_boolean() && !required->is_null())
        refuse(where + "whose \"required\" is not a boolean");
}

}  // namespace

std::string events_page_url(std::string_view base, std::string_view cursor) {
    std::string url(base);
    url += "/events?per_page=" + std::to_string(kEventsPerPage);
    if (cursor.empty()) return url;
    url += "&cursor=";
    static const char hex[] = "0123456789ABCDEF";
    for (unsigned char c : cursor) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            url += static_cast<char>(c);
        } else {
            url += '%';
            url += hex[c >> 4];
            url += hex[c & 15];
        }
    }
    return url;
}

EventsPage parse_events_page(std::string_view body) {
    const json answer = json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (answer.is_discarded() || !answer.is_object()) refuse("something that is not a JSON object");
    auto data = answer.find("data");
    if (data == answer.end() || !data->is_array()) refuse("no \"data\" array");
    EventsPage page;
    size_t n = 0;
    for (const json &e : *data) {
        n++;
        if (!e.is_object()) refuse("an event that is not an object");
        auto id = e.find("id");
        if (id == e.end() || !id->is_string() || !is_uuid(id->get_ref<const std::string &>()))
            refuse("event " + std::to_string(n) + " of the page without a uuid \"id\"");
        auto name = e.find("name");
        if (name == e.end() || !name->is_string()) refuse("event " + std::to_string(n) + " of the page without a name");
        EventDefinition d;
        d.id = lower(id->get<std::string>());
        d.name = name->get<std::string>();
        auto description = e.find("description");
        if (description != e.end() && description->is_string()) d.description = description->get<std::string>();
        auto parameters = e.find("parameters");
        if (parameters == e.end() || parameters->is_null()) {
            d.parameters = "[]";
        } else {
            if (!parameters->is_array())
                refuse("event " + std::to_string(n) + " of the page with parameters that are not an array");
            for (const json &p : *parameters) check_parameter(p, n);
            d.parameters = parameters->dump();
        }
        page.events.push_back(std::move(d));
    }
    auto meta = answer.find("meta");
    if (meta != answer.end() && meta->is_object()) {
        auto next = meta->find("has_next_page");
        page.has_next_page = next != meta->end() && next->is_boolean() && next->get<bool>();
        auto cursor = meta->find("next_page_cursor");
        if (cursor != meta->end() && cursor->is_string()) page.next_page_cursor = cursor->get<std::string>();
        if (page.has_next_page && page.next_page_cursor.empty()) refuse("a next page without a cursor");
    }
    return page;
}

std::string events_json(const std::vector<EventDefinition> &events) {
    std::unordered_set<std::string> seen;
    json out = json::array();
    for (auto e = events.rbegin(); e != events.rend(); ++e) {
        if (!seen.insert(e->id).second) continue;
        out.push_back({{"id", e->id},
                       {"name", e->name},
                       {"description", e->description},
                       {"parameters", json::parse(e->parameters)}});
    }
    return out.dump();
}

}  // namespace bunce
