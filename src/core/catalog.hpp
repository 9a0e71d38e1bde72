// Bunce's event definitions (GET /v1/events, cursor pages): each event's id, name and
// parameters {name, type: text|numeric|timestamp, required}, read from Bunce's answers.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace bunce {

struct EventDefinition {
    std::string id;  // a uuid, lower case
    std::string name;
    std::string description;
    std::string parameters;  // the parameters array as Bunce returned it, JSON text
};

struct EventsPage {
    std::vector<EventDefinition> events;
    bool has_next_page = false;
    std::string next_page_cursor;
};

// At most this many events per page, and the pages of one sync at most (a catalog of
// 100,000 events): an answer that keeps saying "next page" cannot make a sync endless.
constexpr int kEventsPerPage = 100;
constexpr int kMaxEventsPages = 1000;
// Bytes of one page's answer (the answers to triggers are kept to 64 kB), and of a whole
// catalog as stored; how deep a page may nest; the longest name or description.
constexpr size_t kMaxEventsPageBytes = 4 * 1024 * 1024;
constexpr size_t kMaxCatalogBytes = 32 * 1024 * 1024;
constexpr size_t kMaxEventsPageDepth = 8;
constexpr size_t kMaxEventNameBytes = 1000;
constexpr size_t kMaxEventDescriptionBytes = 10000;

// The URL of one page: `base` is bunce.api_url without a trailing slash; an empty cursor is
// the first page.
std::string events_page_url(std::string_view base, std::string_view cursor);

// Reads one page: {"success": true, "data": [event, ...], "meta": {"has_next_page": bool,
// "next_page_cursor": "..."}}. Throws std::runtime_error naming what is wrong (never
// quoting the answer), also for what PostgreSQL could not store (a NUL character) and what
// is beyond the limits above.
EventsPage parse_events_page(std::string_view body);

// A parameter of an event definition, as the checks at enqueue read it.
struct EventParameter {
    std::string name;
    enum Type { text, numeric, timestamp } type;
    bool required;
};

// The parameters of a definition as bunce.events keeps them (checked when synced); throws
// std::runtime_error.
std::vector<EventParameter> parse_parameters(std::string_view json_text);

// A payload's top-level value for a parameter: its JSON kind, and for a string or a number
// its text.
struct ParameterValue {
    enum Kind { absent, null, string, number, boolean, container } kind;
    std::string_view text;
};

// What the value needs: nothing, another string in its place (a timestamp in Bunce's form),
// to be read as local time in the session's time zone (a date-time without an offset), or
// refusal (the message names the event and the parameter, never the value). Throws nothing.
struct ParameterCheck {
    enum Result { ok, replace, local_time, refused } result = ok;
    std::string value;  // replace: the string to send
    std::string message, hint;
};
ParameterCheck check_parameter(std::string_view event_name, const EventParameter &p, const ParameterValue &v);

// The events of a sync as one JSON array of {id, name, description, parameters}, each id
// once (the later one: pages that moved while they were read).
std::string events_json(const std::vector<EventDefinition> &events);

}  // namespace bunce
