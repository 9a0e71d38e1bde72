#include "payload.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include <nlohmann/json.hpp>

#include "errors.hpp"
#include "json_depth.hpp"
#include "timestamp.hpp"
#include "utf8.hpp"

namespace bunce {

using nlohmann::json;

namespace {

const char *kShapeHint =
    "A payload needs \"email\" or a \"customer\" object with \"customer_id\" or \"email\", "
    "for example jsonb_build_object('email', 'ada@example.com', 'amount', 120.5).";

[[noreturn]] void refuse(const std::string &message, const std::string &hint = kShapeHint) {
    throw InvalidPayload(message, hint);
}

bool is_integer_token(std::string_view t) {
    if (!t.empty() && t.front() == '-') t.remove_prefix(1);
    if (t.empty()) return false;
    for (char c : t)
        if (c < '0' || c > '9') return false;
    return true;
}

// How many characters a JSON number takes written out without an exponent, as PostgreSQL's
// numeric prints it (at least; an exponent too large to read counts as too long).
constexpr size_t kMaxNumberChars = 64;
size_t written_out_length(std::string_view t) {
    const size_t e = t.find_first_of("eE");
    if (e == t.npos) return t.size();
    const std::string_view mantissa = t.substr(0, e);
    std::string_view exp = t.substr(e + 1);
    const bool negative = !exp.empty() && exp.front() == '-';
    if (!exp.empty() && (exp.front() == '-' || exp.front() == '+')) exp.remove_prefix(1);
    if (exp.size() > 6) return SIZE_MAX;
    long x = 0;
    for (char c : exp) x = x * 10 + (c - '0');
    if (negative) x = -x;
    const size_t dot = mantissa.find('.');
    const long whole = static_cast<long>(dot == mantissa.npos ? mantissa.size() : dot);
    const long fraction = dot == mantissa.npos ? 0 : static_cast<long>(mantissa.size() - dot - 1);
    const long digits_before = std::max(1L, whole + x), digits_after = std::max(0L, fraction - x);
    return static_cast<size_t>(digits_before + (digits_after ? 1 + digits_after : 0));
}

// A JSON string token (quotes included) as text: escapes decoded when it has any.
std::string_view token_text(std::string_view token, bool escaped, std::string &decoded) {
    if (!escaped) return token.substr(1, token.size() - 2);
    decoded = json::parse(token).get<std::string>();
    return decoded;
}

}  // namespace

bool is_normalised(std::string_view top_key, bool at_top) {
    return top_key != "customer" && !(at_top && top_key == "email");
}

std::optional<std::string> normalise_string(std::string_view field, std::string_view text) {
    TimestampText ts = classify_timestamp(text);
    if (ts.kind == TimestampText::out_of_range)
        refuse("payload field \"" + std::string(field) + "\" holds a date-time outside the years 0001 to 9999 (UTC)",
               "Bunce takes timestamps only as YYYY-MM-DDTHH:MM:SSZ and drops any other form; correct the value.");
    if (ts.kind != TimestampText::date_time) return std::nullopt;
    return std::move(ts.utc);
}

bool beyond_double(std::string_view number) {
    return (number.size() > 300 || number.find_first_of("eE") != number.npos) &&
           std::isinf(std::strtod(std::string(number).c_str(), nullptr));
}

void check_number(std::string_view field, std::string_view number) {
    if (beyond_double(number))
        refuse("payload field \"" + std::string(field) + "\" holds a number too large for Bunce",
               "Numbers must fit in double precision (about 1.8e308); send larger ones as strings.");
    // jsonb writes numbers out in full: 0e-16383 would become 16,385 characters.
    if (written_out_length(number) > kMaxNumberChars)
        throw InvalidJson("payload field \"" + std::string(field) + "\" holds a number of more than " +
                              std::to_string(kMaxNumberChars) + " characters when written out",
                          "Bunce reads numbers as double precision; send such a value as a string.");
}

void check_integer_customer_id(std::string_view number) {
    if (!is_integer_token(number))
        refuse("payload field \"customer.customer_id\" must be a string or an integer",
               "Pass the customer id as text, for example \"42\".");
}

namespace {

// Normalises the payload in its JSON text: date-time strings into Bunce's form, everywhere
// but in the customer object and the top-level "email" (identities, not times: a customer_id
// may look like a date), and an integer customer.customer_id into a string. Working on the
// text rather than a parsed tree keeps every number exactly as written (120.50 stays 120.50,
// large integers stay whole). The text must be valid JSON without NUL bytes; returns nullopt
// when nothing changes. Throws InvalidPayload for a date-time Bunce's form cannot hold or a
// number beyond double precision, InvalidJson for what jsonb cannot store or would write out
// long.
std::optional<std::string> normalise_text(std::string_view t) {
    struct Level {
        bool object;
        bool expect_key;
        std::string key;  // the key of the value being read, in an object
    };
    std::vector<Level> levels;
    std::string out, decoded;
    size_t copied = 0;  // t[0, copied) is in out
    auto replace = [&](size_t from, size_t to, const std::string &with) {
        if (out.empty()) out.reserve(t.size() + 16);
        out.append(t.substr(copied, from - copied));
        out.append(with);
        copied = to;
    };
    for (size_t i = 0; i < t.size();) {
        const char c = t[i];
        if (c == '"') {
            size_t end = i + 1;
            bool escaped = false;
            while (end < t.size() && t[end] != '"') {
                if (t[end] == '\\') {
                    escaped = true;
                    end++;
                }
                end++;
            }
            const std::string_view text = token_text(t.substr(i, end + 1 - i), escaped, decoded);
            Level *level = levels.empty() ? nullptr : &levels.back();
            if (text.find('\0') != std::string_view::npos)  // escaped as \u0000: jsonb refuses it
                throw InvalidJson("payload field \"" + (levels.empty() ? std::string() : levels[0].key) +
                                      "\" holds a NUL character (\\u0000), which PostgreSQL cannot store",
                                  "Remove the NUL character from the value.");
            if (level && level->object && level->expect_key) {
                level->key.assign(text);
                level->expect_key = false;
            } else if (level && levels[0].object && is_normalised(levels[0].key, levels.size() == 1)) {
                if (auto utc = normalise_string(levels[0].key, text); utc && (escaped || *utc != text))
                    replace(i, end + 1, '"' + *utc + '"');
            }
            i = end + 1;
            continue;
        }
        if (c == '-' || (c >= '0' && c <= '9')) {
            size_t end = i;
            while (end < t.size() && std::strchr("+-.0123456789eE", t[end])) end++;
            const std::string_view number = t.substr(i, end - i);
            check_number(levels.empty() ? std::string() : levels[0].key, number);
            if (levels.size() == 2 && levels[0].key == "customer" && levels[1].object &&
                levels[1].key == "customer_id") {
                check_integer_customer_id(number);
                replace(i, end, '"' + std::string(number) + '"');
            }
            i = end;
            continue;
        }
        if (c == '{' || c == '[')
            levels.push_back({c == '{', c == '{', {}});
        else if ((c == '}' || c == ']') && !levels.empty())
            levels.pop_back();
        else if (c == ',' && !levels.empty() && levels.back().object)
            levels.back().expect_key = true;
        i++;
    }
    if (copied == 0) return std::nullopt;
    out.append(t.substr(copied));
    return out;
}

void check_email_text(std::string_view email, const char *field) {
    if (!is_valid_email(email))
        refuse(std::string("payload field \"") + field + "\" is not a well-formed email address",
               "Use an address of the form name@example.com.");
}

void check_email(const json &v, const char *field) {
    if (!v.is_string()) refuse(std::string("payload field \"") + field + "\" must be a string", kShapeHint);
    check_email_text(v.get_ref<const std::string &>(), field);
}

[[noreturn]] void refuse_empty_customer_id() { refuse("payload field \"customer.customer_id\" must not be empty"); }
[[noreturn]] void refuse_customer_without_id() {
    refuse("payload field \"customer\" needs \"customer_id\" or \"email\"");
}
[[noreturn]] void refuse_no_recipient() { refuse("payload needs \"email\" or \"customer\""); }

void check_optional_string(const json &customer, const char *key) {
    auto it = customer.find(key);
    if (it != customer.end() && !it->is_null() && !it->is_string())
        refuse(std::string("payload field \"customer.") + key + "\" must be a string",
               "Bunce expects first_name, last_name and phone_no as strings.");
}

// An integer customer_id is accepted: normalise_text makes it a string (and refuses one that
// is not an integer).
void check_customer(const json &customer) {
    if (!customer.is_object())
        refuse("payload field \"customer\" must be a JSON object",
               "Send one customer object, for example {\"customer_id\": \"42\"}.");
    bool has_id = false;
    auto id = customer.find("customer_id");
    if (id != customer.end() && !id->is_null()) {
        if (id->is_number()) {  // an integer of any length is made a string; others refused there
            has_id = true;
        } else if (!id->is_string()) {
            refuse("payload field \"customer.customer_id\" must be a string",
                   "Pass the customer id as text or as an integer.");
        } else {
            if (id->get_ref<const std::string &>().empty()) refuse_empty_customer_id();
            has_id = true;
        }
    }
    auto email = customer.find("email");
    if (email != customer.end() && !email->is_null())
        check_email(*email, "customer.email");
    else if (!has_id)
        refuse_customer_without_id();
    check_optional_string(customer, "first_name");
    check_optional_string(customer, "last_name");
    check_optional_string(customer, "phone_no");
    auto devices = customer.find("devices");
    if (devices != customer.end() && !devices->is_null()) {
        const char *hint = "Use [{\"device_type\": \"ios\", \"device_token\": \"...\"}].";
        if (!devices->is_array()) refuse("payload field \"customer.devices\" must be an array", hint);
        for (const auto &d : *devices) {
            if (!d.is_object()) refuse("payload field \"customer.devices\" must hold objects", hint);
            for (const char *key : {"device_type", "device_token"}) {
                auto f = d.find(key);
                if (f == d.end() || !f->is_string())
                    refuse(std::string("payload field \"customer.devices[].") + key +
                               "\" is required and must be a string",
                           hint);
            }
        }
    }
}

// Unicode's white space (Zs, line and paragraph separators, NEL) and the invisible format
// characters that make two addresses look alike.
bool is_unicode_space(uint32_t cp) {
    return cp == 0x85 || cp == 0xA0 || cp == 0xAD || cp == 0x1680 || cp == 0x180E || (cp >= 0x2000 && cp <= 0x200F) ||
           cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x2060 || cp == 0x3000 ||
           cp == 0xFEFF || (cp >= 0x80 && cp < 0xA0);
}

}  // namespace

bool is_valid_email(std::string_view e) {
    if (e.size() < 3 || e.size() > 254) return false;
    const auto at = e.find('@');
    if (at == std::string_view::npos || at == 0 || at > 64 || e.find('@', at + 1) != e.npos) return false;
    const auto domain = e.substr(at + 1);
    const auto dot = domain.rfind('.');
    if (dot == std::string_view::npos || dot == 0 || dot + 1 >= domain.size()) return false;
    if (domain.front() == '-' || domain.find("..") != domain.npos) return false;
    for (size_t i = 0; i < e.size();) {
        const unsigned char c = static_cast<unsigned char>(e[i]);
        if (c < 0x80) {
            if (c <= ' ' || c == 0x7f || c == '<' || c == '>' || c == '(' || c == ')' || c == ',' || c == ';' ||
                c == '\\' || c == '"')
                return false;
            i++;
            continue;
        }
        // Beyond ASCII (internationalised addresses): well-formed UTF-8, and no space or
        // invisible character of Unicode's, which Bunce refuses.
        const uint32_t cp = utf8_next(e, i);
        if (cp == 0 || is_unicode_space(cp)) return false;
    }
    return true;
}

void check_fields(const PayloadFields &f) {
    if (f.email) check_email_text(f.email, "email");
    if (f.has_customer) {
        if (f.customer_id && !*f.customer_id) refuse_empty_customer_id();
        if (f.customer_email)
            check_email_text(f.customer_email, "customer.email");
        else if (!f.customer_id)
            refuse_customer_without_id();
    } else if (!f.email) {
        refuse_no_recipient();
    }
}

namespace {

// The top-level "email" and "customer" (nullptr: absent).
void check_recipient(const json *email, const json *customer) {
    const bool has_email = email && !email->is_null();
    if (has_email) check_email(*email, "email");
    if (customer && !customer->is_null())
        check_customer(*customer);
    else if (!has_email)
        refuse_no_recipient();
}

void check_depth(std::string_view text) { check_parsed_depth(json_depth(text, kMaxPayloadDepth)); }

}  // namespace

void check_parsed_recipient(std::string_view email_json, std::string_view customer_json) {
    json email, customer;
    try {
        // Mostly a plain string: no parser needed for it.
        const bool plain = email_json.size() >= 2 && email_json.front() == '"' && email_json.back() == '"' &&
                           email_json.find('\\') == email_json.npos;
        if (plain)
            email = std::string(email_json.substr(1, email_json.size() - 2));
        else if (!email_json.empty())
            email = json::parse(email_json);
        if (!customer_json.empty()) customer = json::parse(customer_json);
    } catch (const json::exception &) {
        throw InvalidJson("payload is not valid JSON");
    }
    check_recipient(email_json.empty() ? nullptr : &email, customer_json.empty() ? nullptr : &customer);
}

void check_parsed_depth(size_t depth) {
    if (depth > kMaxPayloadDepth)
        throw LimitExceeded(
            "payload is nested deeper than " + std::to_string(kMaxPayloadDepth) + " levels",
            "Bunce payloads are flat objects with a \"customer\" object; send nested data as a string.");
}

void check_member_value(std::string_view key, std::string_view json_text) {
    const std::string wrapped = "{" + json(std::string(key)).dump() + ":" + std::string(json_text) + "}";
    if (wrapped.find('\0') != std::string::npos) throw InvalidJson("payload is not valid JSON");
    check_depth(wrapped);
    try {
        normalise_text(wrapped);  // first: the parser takes a number beyond double precision for an error
        if (!json::accept(wrapped)) throw InvalidJson("payload is not valid JSON");
    } catch (const json::exception &) {
        throw InvalidJson("payload is not valid JSON");
    }
}

PreparedPayload prepare_payload(std::string_view text) {
    // The parser would stop at a NUL byte and take what came before it for the whole text.
    if (text.find('\0') != std::string_view::npos) throw InvalidJson("payload is not valid JSON");
    check_depth(text);
    json payload;
    try {
        payload = json::parse(text);
    } catch (const json::out_of_range &) {  // valid JSON, but a number beyond double precision
        normalise_text(text);               // names the field
        refuse("payload holds a number too large for Bunce",
               "Numbers must fit in double precision (about 1.8e308); send larger ones as strings.");
    } catch (const json::exception &) {
        throw InvalidJson("payload is not valid JSON");
    }
    if (!payload.is_object()) refuse(std::string("payload must be a JSON object, not ") + payload.type_name());
    auto email = payload.find("email");
    auto customer = payload.find("customer");
    check_recipient(email == payload.end() ? nullptr : &*email, customer == payload.end() ? nullptr : &*customer);
    if (auto normalised = normalise_text(text)) return {true, std::move(*normalised)};
    return {false, std::string()};
}

}  // namespace bunce
