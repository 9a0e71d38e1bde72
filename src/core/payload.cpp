#include "payload.hpp"

#include <nlohmann/json.hpp>

#include "errors.hpp"
#include "timestamp.hpp"

namespace bunce {

using nlohmann::json;

namespace {

const char *kShapeHint =
    "A payload needs \"email\" or a \"customer\" object with \"customer_id\" or \"email\", "
    "for example jsonb_build_object('email', 'ada@example.com', 'amount', 120.5).";

[[noreturn]] void refuse(const std::string &message, const std::string &hint = kShapeHint) {
    throw InvalidPayload(message, hint);
}

// Rewrites every date-time string below v into Bunce's form; true if anything changed.
bool normalise_values(json &v) {
    bool changed = false;
    if (v.is_string()) {
        if (auto ts = normalise_timestamp(v.get_ref<const std::string &>())) {
            if (*ts != v.get_ref<const std::string &>()) {
                v = std::move(*ts);
                changed = true;
            }
        }
    } else if (v.is_structured()) {
        for (auto &child : v) changed |= normalise_values(child);
    }
    return changed;
}

void check_email_text(std::string_view email, const char *field) {
    if (!is_valid_email(email))
        refuse(std::string("payload field \"") + field + "\" is not a well-formed email address",
               "Use an address of the form name@example.com.");
}

void check_email(const json &v, const char *field) {
    if (!v.is_string())
        refuse(std::string("payload field \"") + field + "\" must be a string", kShapeHint);
    check_email_text(v.get_ref<const std::string &>(), field);
}

[[noreturn]] void refuse_empty_customer_id() { refuse("payload field \"customer.customer_id\" must not be empty"); }
[[noreturn]] void refuse_customer_without_id() { refuse("payload field \"customer\" needs \"customer_id\" or \"email\""); }
[[noreturn]] void refuse_no_recipient() { refuse("payload needs \"email\" or \"customer\""); }

void check_optional_string(const json &customer, const char *key) {
    auto it = customer.find(key);
    if (it != customer.end() && !it->is_null() && !it->is_string())
        refuse(std::string("payload field \"customer.") + key + "\" must be a string",
               "Bunce expects first_name, last_name and phone_no as strings.");
}

// Returns true if it changed the customer (a numeric customer_id made a string).
bool check_customer(json &customer) {
    if (!customer.is_object())
        refuse("payload field \"customer\" must be a JSON object",
               "Send one customer object, for example {\"customer_id\": \"42\"}.");
    bool changed = false;
    bool has_id = false;
    auto id = customer.find("customer_id");
    if (id != customer.end() && !id->is_null()) {
        if (id->is_number_integer()) {
            *id = id->dump();
            changed = true;
        }
        if (!id->is_string())
            refuse("payload field \"customer.customer_id\" must be a string",
                   "Pass the customer id as text or as an integer.");
        if (id->get_ref<const std::string &>().empty()) refuse_empty_customer_id();
        has_id = true;
    }
    auto email = customer.find("email");
    if (email != customer.end() && !email->is_null()) check_email(*email, "customer.email");
    else if (!has_id)
        refuse_customer_without_id();
    check_optional_string(customer, "first_name");
    check_optional_string(customer, "last_name");
    check_optional_string(customer, "phone_no");
    auto devices = customer.find("devices");
    if (devices != customer.end()) {
        const char *hint = "Use [{\"device_type\": \"ios\", \"device_token\": \"...\"}].";
        if (!devices->is_array())
            refuse("payload field \"customer.devices\" must be an array", hint);
        for (const auto &d : *devices) {
            if (!d.is_object())
                refuse("payload field \"customer.devices\" must hold objects", hint);
            for (const char *key : {"device_type", "device_token"}) {
                auto f = d.find(key);
                if (f == d.end() || !f->is_string())
                    refuse(std::string("payload field \"customer.devices[].") + key +
                               "\" is required and must be a string",
                           hint);
            }
        }
    }
    return changed;
}

}  // namespace

bool is_valid_email(std::string_view e) {
    if (e.size() < 3 || e.size() > 254) return false;
    const auto at = e.find('@');
    if (at == std::string_view::npos || at == 0 || at > 64 || e.find('@', at + 1) != e.npos)
        return false;
    const auto domain = e.substr(at + 1);
    const auto dot = domain.rfind('.');
    if (dot == std::string_view::npos || dot == 0 || dot + 1 >= domain.size()) return false;
    if (domain.front() == '-' || domain.find("..") != domain.npos) return false;
    for (unsigned char c : e)
        if (c <= ' ' || c == 0x7f || c == '<' || c == '>' || c == '(' || c == ')' || c == ',' ||
            c == ';' || c == '\\' || c == '"')
            return false;
    return true;
}

void check_fields(const PayloadFields &f) {
    if (f.email) check_email_text(f.email, "email");
    if (f.has_customer) {
        if (f.customer_id && !*f.customer_id) refuse_empty_customer_id();
        if (f.customer_email) check_email_text(f.customer_email, "customer.email");
        else if (!f.customer_id) refuse_customer_without_id();
    } else if (!f.email) {
        refuse_no_recipient();
    }
}

PreparedPayload prepare_payload(std::string_view text) {
    json payload = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (payload.is_discarded()) throw InvalidJson("payload is not valid JSON");
    if (!payload.is_object())
        refuse(std::string("payload must be a JSON object, not ") + payload.type_name());

    bool changed = false;
    auto email = payload.find("email");
    const bool has_email = email != payload.end() && !email->is_null();
    if (has_email) check_email(*email, "email");
    auto customer = payload.find("customer");
    if (customer != payload.end() && !customer->is_null()) changed |= check_customer(*customer);
    else if (!has_email) refuse_no_recipient();

    changed |= normalise_values(payload);
    if (!changed) return {false, std::string()};
    return {true, payload.dump()};
}

}  // namespace bunce
