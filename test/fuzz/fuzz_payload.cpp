// bunce::prepare_payload on arbitrary text. Beyond "no crash, no sanitizer report, only
// InvalidJson/InvalidPayload": an accepted payload, as it will be sent, is valid JSON that
// prepare_payload accepts again unchanged, holds no date-time string with an offset that is
// not yet in Bunce's form (but in "customer" and the top-level "email", which are never
// rewritten), and has customer.customer_id as a string (payload.hpp's promise).
// Escaped text is reachable: the generic trigger splices a json column's text as it is.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "errors.hpp"
#include "fuzz_check.hpp"
#include "payload.hpp"
#include "timestamp.hpp"

namespace {

// Every string value (not key) is already normalised.
void check_strings(const nlohmann::json &j, bool top = false) {
    if (top && j.is_object()) {
        for (auto it = j.begin(); it != j.end(); ++it)
            if (it.key() != "customer" && it.key() != "email") check_strings(*it);
        return;
    }
    if (j.is_string()) {
        const auto &s = j.get_ref<const std::string &>();
        auto ts = bunce::normalise_timestamp(s);
        FUZZ_CHECK(!ts || *ts == s, "a date-time string with an offset left as it is");
    } else if (j.is_structured()) {
        for (const auto &v : j) check_strings(v);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const std::string text(reinterpret_cast<const char *>(data), size);
    bunce::PreparedPayload p;
    try {
        p = bunce::prepare_payload(text);
    } catch (const bunce::InvalidJson &) {
        return 0;
    } catch (const bunce::InvalidPayload &) {
        return 0;
    } catch (const bunce::LimitExceeded &) {
        return 0;
    }
    const std::string &sent = p.changed ? p.json : text;
    FUZZ_CHECK(!p.changed || p.json != text, "changed, but the text is the same");
    FUZZ_CHECK(nlohmann::json::accept(sent), "normalised payload is not valid JSON");
    bunce::PreparedPayload again;
    try {
        again = bunce::prepare_payload(sent);
    } catch (const std::exception &e) {
        std::fprintf(stderr, "re-preparing the normalised payload threw: %s\n", e.what());
        FUZZ_CHECK(false, "normalised payload refused");
    }
    FUZZ_CHECK(!again.changed, "normalising is not idempotent");

    const auto j = nlohmann::json::parse(sent);
    check_strings(j, true);
    auto customer = j.find("customer");
    if (customer != j.end() && customer->is_object()) {
        auto id = customer->find("customer_id");
        FUZZ_CHECK(id == customer->end() || id->is_null() || id->is_string(),
                   "customer.customer_id is sent as a non-string");
    }
    return 0;
}
