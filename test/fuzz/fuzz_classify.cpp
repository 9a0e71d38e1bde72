// bunce::classify, bunce::parse_retry_after and bunce::backoff_ms (delivery.hpp) on
// arbitrary answers. Input: 2 bytes of HTTP status, 4 bytes for the clock and limits, then
// body and transport error / Retry-After text separated by the first NUL.
// Invariants: the outcome follows the table in delivery.hpp, the message is at most 500
// characters of valid UTF-8 (it is stored in a text column), Retry-After waits 1..max seconds.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "delivery.hpp"
#include "fuzz_check.hpp"

namespace {

size_t chars(std::string_view s) {
    size_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 6) return 0;
    // Mostly real statuses, sometimes anything (libcurl reports what the server sent).
    long status = data[0] | data[1] << 8;
    if (status < 0x8000) status %= 600;
    else status -= 0xC000;
    const uint32_t knob = data[2] | data[3] << 8 | data[4] << 16 | uint32_t(data[5]) << 24;
    const std::string rest(reinterpret_cast<const char *>(data + 6), size - 6);
    const size_t nul = rest.find('\0');
    const std::string body = rest.substr(0, nul);
    const std::string other = nul == rest.npos ? std::string() : rest.substr(nul + 1);

    const bunce::Verdict v = bunce::classify(status, body, other);
    using bunce::Outcome;
    Outcome want;
    if (status == 0) want = Outcome::retry;
    else if (status >= 200 && status < 300) {
        // Refused only when the envelope's "success" (or the old "status") is false.
        auto j = nlohmann::json::parse(body, nullptr, false);
        bool refused = false;
        if (j.is_object())
            for (const char *key : {"success", "status"})
                if (j.contains(key) && j[key].is_boolean()) {
                    refused = !j[key].get<bool>();
                    break;
                }
        want = refused ? Outcome::rejected : Outcome::delivered;
    }
    else if (status == 400 || status == 404 || status == 413 || status == 422) want = Outcome::rejected;
    else if (status == 401 || status == 403) want = Outcome::unauthorized;
    else if (status == 429) want = Outcome::rate_limited;
    else want = Outcome::retry;
    FUZZ_CHECK(v.outcome == want, "outcome does not follow the status");
    FUZZ_CHECK(!v.message.empty(), "no message");
    if (status != 0) {
        FUZZ_CHECK(chars(v.message) <= 500, "message longer than 500 characters");
        FUZZ_CHECK(valid_utf8(v.message), "message is not valid UTF-8");
    }

    // The worker's clock is "now" in seconds; max_seconds is at least 1.
    const int64_t now = knob % (int64_t(1) << 34);
    const int64_t max_seconds = 1 + (knob >> 8) % 86400;
    if (auto wait = bunce::parse_retry_after(other, now, max_seconds))
        FUZZ_CHECK(*wait >= 1 && *wait <= max_seconds, "Retry-After wait out of range");

    // The worker's constants: 1 s base, 10 min cap; attempts is any int.
    const int attempts = static_cast<int>(knob);
    const int64_t b = bunce::backoff_ms(attempts, 1000, 600000, uint64_t(knob) * 0x9E3779B97F4A7C15ull);
    FUZZ_CHECK(b >= 500 && b <= 600000, "backoff out of [base/2, cap]");
    return 0;
}
