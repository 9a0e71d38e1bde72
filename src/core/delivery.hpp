// What to do with Bunce's answer to one request, and when to try again.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace bunce {

enum class Outcome {
    delivered,     // 2xx and "success" not false: remove from the outbox
    rejected,      // 400/404/413/422 or 2xx with success false: dead letter, never retried
    unauthorized,  // 401/403: the key is wrong, pause all delivery
    rate_limited,  // 429: pause the whole sender for Retry-After, then retry
    retry,         // 408, other 4xx/5xx, timeouts, connection errors: back off and retry
};

struct Verdict {
    Outcome outcome;
    std::string message;  // Bunce's "message", or a description of what went wrong
};

// Text from the network made fit to store and show: at most max_chars characters of valid
// UTF-8 (U+FFFD for bytes that are not), control characters but newline and tab as spaces.
std::string printable_text(std::string_view s, size_t max_chars);

// status 0 means no HTTP answer at all (transport_error says why).
Verdict classify(long status, std::string_view body, std::string_view transport_error);

// Seconds to wait from a Retry-After header (delay-seconds or an HTTP date), at least 1,
// at most max_seconds; empty when the header is missing or unreadable.
std::optional<int64_t> parse_retry_after(std::string_view value, int64_t now_epoch_seconds, int64_t max_seconds = 3600);

// Delay before attempt number `attempts + 1` after `attempts` failed ones: full jitter,
// a uniformly random value in [base/2, min(cap, base * 2^(attempts-1))]. `random` is any
// 64-bit random number. The exponent is capped, so no overflow for any attempts.
int64_t backoff_ms(int attempts, int64_t base_ms, int64_t cap_ms, uint64_t random);

// Checks bunce.api_url: https, or plain http only to a loopback address so that the key
// never crosses a network in clear text. Returns the problem, or empty when usable.
std::optional<std::string> api_url_problem(std::string_view url);

}  // namespace bunce
