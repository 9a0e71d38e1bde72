#include "delivery.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <nlohmann/json.hpp>

#include "timestamp.hpp"
#include "utf8.hpp"

namespace bunce {

namespace {

// Bunce's envelope is {"success": bool, "message": ...}; an old copy of the docs names the
// boolean "status", so either counts.
struct Envelope {
    std::optional<bool> success;
    std::string message;
};

Envelope read_envelope(std::string_view body) {
    Envelope env;
    auto j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return env;
    for (const char *key : {"success", "status"}) {
        auto it = j.find(key);
        if (it != j.end() && it->is_boolean()) {
            env.success = it->get<bool>();
            break;
        }
    }
    auto msg = j.find("message");
    if (msg != j.end() && msg->is_string()) env.message = msg->get<std::string>();
    return env;
}

bool is_port(std::string_view s) { return s.size() <= 5 && s.find_first_not_of("0123456789") == s.npos; }

// host[:port] of a plain http URL names this machine: "localhost", or an IP address literal
// in 127.0.0.0/8 or ::1, parsed as an address (so "127.0.0.1.example.com" is not one).
bool is_loopback_authority(std::string_view authority) {
    std::string host;
    std::string_view rest;
    if (authority.front() == '[') {
        const size_t close = authority.find(']');
        if (close == authority.npos) return false;
        host = std::string(authority.substr(1, close - 1));
        rest = authority.substr(close + 1);
        in6_addr a6;
        if (inet_pton(AF_INET6, host.c_str(), &a6) != 1 || !IN6_IS_ADDR_LOOPBACK(&a6)) return false;
    } else {
        const size_t colon = authority.find(':');
        host = std::string(authority.substr(0, colon));
        rest = colon == authority.npos ? std::string_view() : authority.substr(colon);
        in_addr a4;
        if (host != "localhost" && (inet_pton(AF_INET, host.c_str(), &a4) != 1 || (ntohl(a4.s_addr) >> 24) != 127))
            return false;
    }
    return rest.empty() || (rest.front() == ':' && is_port(rest.substr(1)));
}

}  // namespace

std::string printable_text(std::string_view s, size_t max_chars) {
    std::string out;
    size_t chars = 0;
    for (size_t i = 0; i < s.size() && chars < max_chars; chars++) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c >= 0x80) {
            const size_t start = i;
            if (utf8_next(s, i) == 0) {
                out += "\xEF\xBF\xBD";  // U+FFFD for a byte that is not UTF-8
                i++;
            } else {
                out.append(s.substr(start, i - start));
            }
        } else if (c < 0x20 && c != '\n' && c != '\t') {
            out += ' ';  // control characters (NUL among them) would break a text column or a log line
            i++;
        } else {
            out += static_cast<char>(c);
            i++;
        }
    }
    return out;
}

Verdict classify(long status, std::string_view body, std::string_view transport_error) {
    if (status == 0)
        return {Outcome::retry, transport_error.empty() ? std::string("no answer") : std::string(transport_error)};
    Envelope env = read_envelope(body);
    std::string message = env.message.empty() ? "HTTP " + std::to_string(status) : env.message;
    message = printable_text(message, 500);
    if (status >= 200 && status < 300) {
        if (env.success == false) return {Outcome::rejected, message};
        return {Outcome::delivered, message};
    }
    switch (status) {
        case 400:
        case 404:
        case 413:
        case 422: return {Outcome::rejected, message};
        case 401:
        case 403: return {Outcome::unauthorized, message};
        case 429: return {Outcome::rate_limited, message};
        default: return {Outcome::retry, message};
    }
}

std::optional<int64_t> parse_retry_after(std::string_view v, int64_t now, int64_t max_seconds) {
    while (!v.empty() && std::isspace(static_cast<unsigned char>(v.front()))) v.remove_prefix(1);
    while (!v.empty() && std::isspace(static_cast<unsigned char>(v.back()))) v.remove_suffix(1);
    if (v.empty()) return std::nullopt;
    int64_t wait;
    if (std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        if (v.size() > 9) return max_seconds;
        wait = 0;
        for (char c : v) wait = wait * 10 + (c - '0');
    } else {
        // IMF-fixdate, the form HTTP requires: "Sun, 06 Nov 1994 08:49:37 GMT".
        static const char *months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
        char mon[4] = {0};
        int day, year, h, m, s;
        std::string text(v);
        if (std::sscanf(text.c_str(), "%*3s, %2d %3s %4d %2d:%2d:%2d GMT", &day, mon, &year, &h, &m, &s) != 6)
            return std::nullopt;
        int month = 0;
        for (int i = 0; i < 12; i++)
            if (std::strcmp(mon, months[i]) == 0) month = i + 1;
        if (month == 0 || day < 1 || day > 31 || h > 23 || m > 59 || s > 60) return std::nullopt;
        const int64_t at = days_from_civil(year, static_cast<unsigned>(month), static_cast<unsigned>(day)) * 86400 +
                           h * 3600 + m * 60 + s;
        wait = at - now;
    }
    return std::clamp<int64_t>(wait, 1, max_seconds);
}

int64_t backoff_ms(int attempts, int64_t base_ms, int64_t cap_ms, uint64_t random) {
    const int exponent = attempts <= 1 ? 0 : std::min(attempts - 1, 30);
    const int64_t ceiling = std::min(cap_ms, base_ms << exponent);
    const int64_t floor = std::min(base_ms / 2, ceiling);
    return floor + static_cast<int64_t>(random % static_cast<uint64_t>(ceiling - floor + 1));
}

std::optional<std::string> api_url_problem(std::string_view url) {
    auto lower = [](std::string_view s) {
        std::string out(s);
        for (auto &c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        return out;
    };
    const std::string u = lower(url);
    if (u.rfind("https://", 0) == 0) {
        if (u.size() == 8) return "bunce.api_url has no host";
        return std::nullopt;
    }
    if (u.rfind("http://", 0) != 0 || u.size() == 7) return "bunce.api_url must start with https://";
    std::string_view authority = std::string_view(u).substr(7);
    authority = authority.substr(0, authority.find_first_of("/?#"));
    if (authority.empty()) return "bunce.api_url has no host";
    if (authority.find('@') != authority.npos) return "bunce.api_url must not carry credentials";
    if (!is_loopback_authority(authority))
        return "plain http:// is allowed only to a loopback address; use https:// so that the "
               "API key is never sent in clear text";
    return std::nullopt;
}

}  // namespace bunce
