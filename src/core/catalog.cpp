#include "catalog.hpp"

#include <cctype>
#include <stdexcept>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "json_depth.hpp"
#include "timestamp.hpp"

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
void check_parameter_definition(const json &p, size_t event) {
    const std::string where = "event " + std::to_string(event) + " of the page: a parameter ";
    if (!p.is_object()) refuse(where + "that is not an object");
    auto name = p.find("name");
    if (name == p.end() || !name->is_string() || name->get_ref<const std::string &>().empty())
        refuse(where + "without a name");
    if (name->get_ref<const std::string &>().size() > kMaxEventNameBytes) refuse(where + "with a name too long");
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
    // Before anything recurses over it; and jsonb cannot hold \u0000 (a "\\u0000" in a
    // text is refused too: a catalog has no use for it).
    if (json_depth(body, kMaxEventsPageDepth) > kMaxEventsPageDepth)
        refuse("a page nested deeper than " + std::to_string(kMaxEventsPageDepth) + " levels");
    if (body.find("\\u0000") != std::string_view::npos) refuse("a page holding a NUL character (\\u0000)");
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
        if (d.name.size() > kMaxEventNameBytes)
            refuse("event " + std::to_string(n) + " of the page with a name of more than " +
                   std::to_string(kMaxEventNameBytes) + " bytes");
        auto description = e.find("description");
        if (description != e.end() && description->is_string()) d.description = description->get<std::string>();
        if (d.description.size() > kMaxEventDescriptionBytes)
            refuse("event " + std::to_string(n) + " of the page with a description of more than " +
                   std::to_string(kMaxEventDescriptionBytes) + " bytes");
        auto parameters = e.find("parameters");
        if (parameters == e.end() || parameters->is_null()) {
            d.parameters = "[]";
        } else {
            if (!parameters->is_array())
                refuse("event " + std::to_string(n) + " of the page with parameters that are not an array");
            for (const json &p : *parameters) check_parameter_definition(p, n);
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

std::vector<EventParameter> parse_parameters(std::string_view json_text) {
    const json parameters = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
    if (!parameters.is_array()) throw std::runtime_error("the parameters of an event are not an array");
    std::vector<EventParameter> out;
    for (const json &p : parameters) {
        check_parameter_definition(p, 1);
        const std::string type = lower(p["type"].get<std::string>());
        auto required = p.find("required");
        out.push_back({p["name"].get<std::string>(),
                       type == "numeric"     ? EventParameter::numeric
                       : type == "timestamp" ? EventParameter::timestamp
                                             : EventParameter::text,
                       required != p.end() && required->is_boolean() && required->get<bool>()});
    }
    return out;
}

namespace {

// A number as Bunce reads one in a string: optional sign, digits, optional fraction and
// exponent (what JSON allows, with a leading '+' or a leading '.' refused as JSON does).
bool is_numeric_text(std::string_view t) {
    size_t i = 0;
    if (i < t.size() && t[i] == '-') i++;
    const size_t start = i;
    while (i < t.size() && std::isdigit(static_cast<unsigned char>(t[i]))) i++;
    if (i == start) return false;
    if (i < t.size() && t[i] == '.') {
        const size_t f = ++i;
        while (i < t.size() && std::isdigit(static_cast<unsigned char>(t[i]))) i++;
        if (i == f) return false;
    }
    if (i < t.size() && (t[i] == 'e' || t[i] == 'E')) {
        i++;
        if (i < t.size() && (t[i] == '+' || t[i] == '-')) i++;
        const size_t e = i;
        while (i < t.size() && std::isdigit(static_cast<unsigned char>(t[i]))) i++;
        if (i == e) return false;
    }
    return i == t.size();
}

}  // namespace

ParameterCheck check_parameter(std::string_view event_name, const EventParameter &p, const ParameterValue &v) {
    ParameterCheck c;
    auto refuse = [&](const std::string &what, const std::string &hint) {
        c.result = ParameterCheck::refused;
        c.message = "bunce event \"" + std::string(event_name) + "\": parameter \"" + p.name + "\" " + what;
        c.hint = hint;
        return c;
    };
    if (v.kind == ParameterValue::absent || v.kind == ParameterValue::null) {
        if (p.required)
            return refuse("is required and missing",
                          "Add it to the payload; Bunce refuses the event without it (see bunce.events).");
        return c;
    }
    switch (p.type) {
        case EventParameter::text: return c;
        case EventParameter::numeric:
            if (v.kind == ParameterValue::number || (v.kind == ParameterValue::string && is_numeric_text(v.text)))
                return c;
            return refuse("must be a number", "Send a JSON number, or a string holding one, such as \"120.50\".");
        case EventParameter::timestamp: {
            const char *hint =
                "Send a date-time such as 2024-05-01T10:00:00Z (with an offset, or without one to read it in "
                "the session's TimeZone), or a date.";
            if (v.kind != ParameterValue::string) return refuse("must be a date-time string", hint);
            // A date alone is that day's midnight UTC, as a date column is.
            const TimestampText t =
                classify_timestamp(v.text.size() == 10 ? std::string(v.text) + "T00:00:00Z" : std::string(v.text));
            if (t.kind == TimestampText::out_of_range)
                return refuse("is outside the years 0001 to 9999 (UTC)",
                              "Bunce's form YYYY-MM-DDTHH:MM:SSZ cannot hold it.");
            if (t.kind == TimestampText::local) {
                c.result = ParameterCheck::local_time;
                return c;
            }
            if (t.kind != TimestampText::date_time) return refuse("is not a date-time", hint);
            if (t.utc != v.text) {
                c.result = ParameterCheck::replace;
                c.value = t.utc;
            }
            return c;
        }
    }
    return c;
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
