// The rules Bunce applies to POST /v1/events/trigger payloads, checked before an event is
// enqueued so that a bad payload fails in the caller's transaction instead of at delivery.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace bunce {

struct PreparedPayload {
    bool changed;      // false: the input is already right, send it as it is
    std::string json;  // when changed: the payload to send, serialised
};

// Deeper payloads are refused (LimitExceeded) before they are parsed: Bunce's payloads are
// flat but for "customer" and its "devices".
constexpr size_t kMaxPayloadDepth = 32;

// Validates a payload (a JSON object with "email" or a "customer" object, see bunce-api.md)
// and normalises it: a date-time string with an offset becomes YYYY-MM-DDTHH:MM:SSZ in UTC
// (but in "customer" and the top-level "email", which are never rewritten), an integer
// customer_id becomes a string. Throws InvalidJson, InvalidPayload or
// LimitExceeded.
PreparedPayload prepare_payload(std::string_view json_text);

// Checks the JSON text of one value of a payload's top-level member `key` for what
// prepare_payload refuses in any JSON (not valid, too deep, a NUL character, numbers too
// large or written out too long, date-times out of range), before it is stored as jsonb.
// Throws as prepare_payload does.
void check_member_value(std::string_view key, std::string_view json_text);

// The rules of prepare_payload one part at a time, for a caller that walks a payload it holds
// parsed already (bunce_trigger's jsonb) instead of its text; `field` is the top-level key a
// value is under. They throw as prepare_payload does.
//
// Whether strings under `top_key` are normalised: not in "customer", nor the top-level
// "email" (`at_top`: the value is the member itself).
bool is_normalised(std::string_view top_key, bool at_top);
// A string that is a date-time: its form for Bunce (which may equal it); nullopt otherwise.
std::optional<std::string> normalise_string(std::string_view field, std::string_view text);
// Whether a number (JSON text) is beyond double precision, which Bunce reads: the first
// thing prepare_payload refuses after the depth, so it goes before the other checks.
bool beyond_double(std::string_view number);
// A number, as JSON text.
void check_number(std::string_view field, std::string_view number);
// customer.customer_id given as a number, as JSON text: it must be an integer (it is sent as
// a string).
void check_integer_customer_id(std::string_view number);
// The top-level "email" and "customer" members as JSON text (empty: absent).
void check_parsed_recipient(std::string_view email_json, std::string_view customer_json);
// How deeply the payload nests objects and arrays (the payload itself is 1).
void check_parsed_depth(size_t depth);

// The parts of a payload that Bunce's rules are about, for a caller that built the payload
// itself from typed values (the generic trigger): NULL means absent.
struct PayloadFields {
    const char *email = nullptr;  // top-level "email"
    bool has_customer = false;    // a "customer" object
    const char *customer_id = nullptr;
    const char *customer_email = nullptr;
};

// Checks those parts exactly as prepare_payload would; throws InvalidPayload.
void check_fields(const PayloadFields &fields);

// A pragmatic address check: local@domain.tld, no spaces, sane length. Bunce's own check is
// not documented; this refuses what is certainly wrong and nothing plausible.
bool is_valid_email(std::string_view email);

}  // namespace bunce
