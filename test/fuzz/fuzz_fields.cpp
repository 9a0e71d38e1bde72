// bunce::check_fields against bunce::prepare_payload: payload.hpp promises the typed trigger's
// check is exactly prepare_payload's, so both must accept or refuse a payload built from the
// same fields, with the same message. Also bunce::is_valid_email's basic promises.
// Input: one flag byte, then up to three '\n'-separated strings (email, customer_id,
// customer email); a flag bit says whether each is present.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "errors.hpp"
#include "fuzz_check.hpp"
#include "payload.hpp"

namespace {

// The message of the InvalidPayload that f throws, or "" when it accepts.
template <class F> std::string refusal(F f) {
    try {
        f();
    } catch (const bunce::InvalidPayload &e) {
        return std::string("refused: ") + e.what();
    }
    return "";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const unsigned flags = data[0];
    std::string rest(reinterpret_cast<const char *>(data + 1), size - 1);
    // Column text in PostgreSQL has no NUL and is valid UTF-8 in the database encoding.
    if (rest.find('\0') != rest.npos || !valid_utf8(rest)) return 0;
    std::string part[3];
    for (int i = 0, from = 0; i < 3; i++) {
        size_t nl = rest.find('\n', from);
        part[i] = rest.substr(from, nl == rest.npos ? rest.npos : nl - from);
        if (nl == rest.npos) break;
        from = static_cast<int>(nl + 1);
    }

    const bool valid = bunce::is_valid_email(part[0]);
    if (valid) {
        FUZZ_CHECK(part[0].find('@') != part[0].npos, "a valid email without @");
        FUZZ_CHECK(part[0].find_first_of(" \t\r\n\"\\<>") == part[0].npos,
                   "a valid email with a space, quote or bracket");
    }

    bunce::PayloadFields f;
    nlohmann::json payload = nlohmann::json::object();
    if (flags & 1) { f.email = part[0].c_str(); payload["email"] = part[0]; }
    if (flags & 2) {
        f.has_customer = true;
        nlohmann::json customer = nlohmann::json::object();
        if (flags & 4) { f.customer_id = part[1].c_str(); customer["customer_id"] = part[1]; }
        if (flags & 8) { f.customer_email = part[2].c_str(); customer["email"] = part[2]; }
        payload["customer"] = customer;
    }
    const std::string typed = refusal([&] { bunce::check_fields(f); });
    const std::string text = payload.dump();
    std::string full;
    try {
        full = refusal([&] { bunce::prepare_payload(text); });
    } catch (const bunce::InvalidJson &) {
        FUZZ_CHECK(false, "a payload built by nlohmann::json is not JSON to prepare_payload");
    }
    if (typed != full) {
        std::fprintf(stderr, "payload %s\ncheck_fields:    %s\nprepare_payload: %s\n", text.c_str(),
                     typed.empty() ? "accepted" : typed.c_str(), full.empty() ? "accepted" : full.c_str());
        FUZZ_CHECK(false, "check_fields and prepare_payload disagree");
    }
    return 0;
}
