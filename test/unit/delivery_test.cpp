// Unit tests for delivery.hpp: classify, parse_retry_after, backoff_ms, api_url_problem.
#include "delivery.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "timestamp.hpp"

using bunce::api_url_problem;
using bunce::backoff_ms;
using bunce::classify;
using bunce::Outcome;
using bunce::parse_retry_after;

namespace {

const char *name(Outcome o) {
    switch (o) {
        case Outcome::delivered: return "delivered";
        case Outcome::rejected: return "rejected";
        case Outcome::unauthorized: return "unauthorized";
        case Outcome::rate_limited: return "rate_limited";
        case Outcome::retry: return "retry";
    }
    return "?";
}

void expect_verdict(long status, const std::string &body, Outcome outcome, const std::string &message,
                    const std::string &transport_error = "") {
    SCOPED_TRACE("status " + std::to_string(status) + " body " + body);
    const auto v = classify(status, body, transport_error);
    EXPECT_EQ(v.outcome, outcome) << name(v.outcome) << " instead of " << name(outcome);
    EXPECT_EQ(v.message, message);
}

int64_t epoch(int64_t y, unsigned m, unsigned d, int hh, int mm, int ss) {
    return bunce::days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss;
}

bool valid_utf8(const std::string &s) {
    size_t i = 0;
    while (i < s.size()) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (n == 0 || i + n > s.size()) return false;
        for (size_t k = 1; k < n; k++)
            if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
        i += n;
    }
    return true;
}

}  // namespace

// ---------------------------------------------------------------- classify

TEST(Classify, SuccessCodes) {
    for (long status : {200L, 201L, 202L}) {
        expect_verdict(status, R"({"success": true, "message": "Event triggered"})", Outcome::delivered,
                       "Event triggered");
        expect_verdict(status, R"({"success": true})", Outcome::delivered, "HTTP " + std::to_string(status));
    }
}

TEST(Classify, SuccessWithoutBody) {
    expect_verdict(200, "", Outcome::delivered, "HTTP 200");
    expect_verdict(202, "", Outcome::delivered, "HTTP 202");
    expect_verdict(204, "", Outcome::delivered, "HTTP 204");
}

TEST(Classify, OldStatusForm) {
    expect_verdict(200, R"({"status": true, "message": "ok"})", Outcome::delivered, "ok");
    expect_verdict(200, R"({"status": false, "message": "bad event"})", Outcome::rejected, "bad event");
    // "success" wins when both are there.
    expect_verdict(200, R"({"success": false, "status": true})", Outcome::rejected, "HTTP 200");
    expect_verdict(200, R"({"success": true, "status": false})", Outcome::delivered, "HTTP 200");
}

TEST(Classify, SuccessFalseIsRejected) {
    expect_verdict(200, R"({"success": false, "message": "Customer not found"})", Outcome::rejected,
                   "Customer not found");
    expect_verdict(201, R"({"success": false})", Outcome::rejected, "HTTP 201");
}

TEST(Classify, NonBooleanSuccessIsIgnored) {
    expect_verdict(200, R"({"success": "false", "message": "m"})", Outcome::delivered, "m");
    expect_verdict(200, R"({"success": 0})", Outcome::delivered, "HTTP 200");
}

TEST(Classify, ClientErrorsAreRejectedWithBuncesMessage) {
    for (long status : {400L, 404L, 413L, 422L}) {
        expect_verdict(status, R"({"success": false, "message": "email is invalid"})", Outcome::rejected,
                       "email is invalid");
        expect_verdict(status, "", Outcome::rejected, "HTTP " + std::to_string(status));
    }
}

TEST(Classify, Unauthorized) {
    expect_verdict(401, R"({"success": false, "message": "Invalid API key"})", Outcome::unauthorized,
                   "Invalid API key");
    expect_verdict(403, R"({"success": false, "message": "Forbidden"})", Outcome::unauthorized, "Forbidden");
    expect_verdict(401, "", Outcome::unauthorized, "HTTP 401");
}

TEST(Classify, RateLimited) {
    expect_verdict(429, R"({"success": false, "message": "Too many requests"})", Outcome::rate_limited,
                   "Too many requests");
    expect_verdict(429, "Too Many Requests", Outcome::rate_limited, "HTTP 429");
}

TEST(Classify, RetryableStatuses) {
    for (long status : {408L, 500L, 502L, 503L, 504L, 409L, 405L, 301L, 302L, 100L}) {
        expect_verdict(status, "", Outcome::retry, "HTTP " + std::to_string(status));
        expect_verdict(status, R"({"message": "try later"})", Outcome::retry, "try later");
    }
}

TEST(Classify, TransportErrors) {
    expect_verdict(0, "", Outcome::retry, "Connection refused", "Connection refused");
    expect_verdict(0, "", Outcome::retry, "Operation timed out after 300 milliseconds",
                   "Operation timed out after 300 milliseconds");
    // Whatever the body says, status 0 is no answer.
    expect_verdict(0, R"({"success": true, "message": "x"})", Outcome::retry, "reset", "reset");
    const auto v = classify(0, "", "");
    EXPECT_EQ(v.outcome, Outcome::retry);
    EXPECT_FALSE(v.message.empty());
}

TEST(Classify, NonJsonBodyGivesHttpStatus) {
    expect_verdict(502, "<html><body>Bad Gateway</body></html>", Outcome::retry, "HTTP 502");
    expect_verdict(400, "plain text error", Outcome::rejected, "HTTP 400");
    expect_verdict(200, "OK", Outcome::delivered, "HTTP 200");
    expect_verdict(500, R"(["message", "x"])", Outcome::retry, "HTTP 500");
    expect_verdict(500, R"({"message": 42})", Outcome::retry, "HTTP 500");
    expect_verdict(500, R"({"message": ""})", Outcome::retry, "HTTP 500");
    expect_verdict(500, R"({"message": "trunc)", Outcome::retry, "HTTP 500");
}

TEST(Classify, LongMessagesAreClipped) {
    const std::string long_message(2000, 'x');
    const auto v = classify(400, R"({"success": false, "message": ")" + long_message + "\"}", "");
    EXPECT_EQ(v.outcome, Outcome::rejected);
    EXPECT_EQ(v.message, std::string(500, 'x'));

    const std::string exact(500, 'y');
    EXPECT_EQ(classify(500, R"({"message": ")" + exact + "\"}", "").message, exact);
    const std::string one_more(501, 'z');
    EXPECT_EQ(classify(500, R"({"message": ")" + one_more + "\"}", "").message.size(), 500u);
}

TEST(Classify, LongMultibyteMessageIsClippedOnACharacterBoundary) {
    std::string message = "a";
    for (int i = 0; i < 300; i++) message += "\xc3\xa9";
    const auto v = classify(400, "{\"message\": \"" + message + "\"}", "");
    EXPECT_TRUE(valid_utf8(v.message));
    const auto characters = std::count_if(v.message.begin(), v.message.end(),
                                          [](char c) { return (static_cast<unsigned char>(c) & 0xc0) != 0x80; });
    EXPECT_LE(characters, 500);
    EXPECT_GE(characters, 250);
}

TEST(Classify, TransportErrorPassedThrough) {
    // A transport error is libcurl's own short text; it is passed through as it is.
    const std::string e = "Failed to connect to 127.0.0.1 port 1: Connection refused";
    EXPECT_EQ(classify(0, "", e).message, e);
}

// ---------------------------------------------------------------- parse_retry_after

TEST(ParseRetryAfter, DelaySeconds) {
    const int64_t now = epoch(2024, 5, 1, 10, 0, 0);
    EXPECT_EQ(parse_retry_after("120", now), 120);
    EXPECT_EQ(parse_retry_after(" 5 ", now), 5);
    EXPECT_EQ(parse_retry_after("\t7\r\n", now), 7);
    EXPECT_EQ(parse_retry_after("1", now), 1);
    EXPECT_EQ(parse_retry_after("0", now), 1);
    EXPECT_EQ(parse_retry_after("000", now), 1);
    EXPECT_EQ(parse_retry_after("3600", now), 3600);
    EXPECT_EQ(parse_retry_after("3601", now), 3600);
    EXPECT_EQ(parse_retry_after("999999999", now), 3600);
    EXPECT_EQ(parse_retry_after("99999999999999999999999999", now), 3600);
    EXPECT_EQ(parse_retry_after("120", now, 60), 60);
    EXPECT_EQ(parse_retry_after("99999999999999999999999999", now, 90), 90);
    EXPECT_EQ(parse_retry_after("0", now, 60), 1);
}

TEST(ParseRetryAfter, HttpDateInTheFuture) {
    const int64_t now = epoch(2024, 5, 1, 10, 0, 0);
    EXPECT_EQ(parse_retry_after("Wed, 01 May 2024 10:02:00 GMT", now), 120);
    EXPECT_EQ(parse_retry_after("Wed, 01 May 2024 10:00:01 GMT", now), 1);
    EXPECT_EQ(parse_retry_after("  Wed, 01 May 2024 10:30:00 GMT  ", now), 1800);
    EXPECT_EQ(parse_retry_after("Thu, 02 May 2024 10:00:00 GMT", now), 3600);
    EXPECT_EQ(parse_retry_after("Thu, 02 May 2024 10:00:00 GMT", now, 86400 * 2), 86400);
    // Across a month and a year end.
    EXPECT_EQ(parse_retry_after("Wed, 01 Jan 2025 00:00:30 GMT", epoch(2024, 12, 31, 23, 59, 0)), 90);
    EXPECT_EQ(parse_retry_after("Fri, 01 Mar 2024 00:00:10 GMT", epoch(2024, 2, 29, 23, 59, 50)), 20);
    const int64_t rfc = epoch(1994, 11, 6, 8, 49, 37);
    EXPECT_EQ(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", rfc - 30), 30);
    for (int m = 1; m <= 12; m++) {
        static const char *months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
        char text[64];
        std::snprintf(text, sizeof text, "Mon, 15 %s 2030 12:00:00 GMT", months[m - 1]);
        EXPECT_EQ(parse_retry_after(text, epoch(2030, static_cast<unsigned>(m), 15, 11, 59, 0)), 60) << text;
    }
}

TEST(ParseRetryAfter, HttpDateInThePast) {
    const int64_t now = epoch(2024, 5, 1, 10, 0, 0);
    EXPECT_EQ(parse_retry_after("Wed, 01 May 2024 09:00:00 GMT", now), 1);
    EXPECT_EQ(parse_retry_after("Wed, 01 May 2024 10:00:00 GMT", now), 1);
    EXPECT_EQ(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), 1);
}

TEST(ParseRetryAfter, GarbageAndEmpty) {
    const int64_t now = epoch(2024, 5, 1, 10, 0, 0);
    for (const char *v :
         {"", " ", "\t\r\n", "soon", "12s", "-5", "+5", "1.5", "5 5", "0x10", "Wed, 01 Foo 2024 10:02:00 GMT",
          "Wed, 01 may 2024 10:02:00 GMT", "Wed, 01 May 2024 25:00:00 GMT", "Wed, 01 May 2024 10:60:00 GMT",
          "Wed, 32 May 2024 10:00:00 GMT", "Wed, 00 May 2024 10:00:00 GMT", "Wed, 01 May 2024", "2024-05-01T10:02:00Z",
          "Wed 01 May 2024 10:02:00 GMT"}) {
        EXPECT_EQ(parse_retry_after(v, now), std::nullopt) << "\"" << v << "\"";
    }
}

// ---------------------------------------------------------------- backoff_ms

namespace {
// min(cap, base * 2^(attempts-1)) computed without overflow (and without the code's own
// exponent cap, which only matters when cap > base * 2^30).
int64_t expected_ceiling(int attempts, int64_t base, int64_t cap) {
    int64_t c = base;
    for (int i = 1; i < attempts && c < cap; i++) c = c > cap / 2 ? cap : c * 2;
    return std::min(c, cap);
}
}  // namespace

TEST(BackoffMs, WithinBoundsForManyRandomValues) {
    std::mt19937_64 rng(4242);
    struct Params {
        int64_t base, cap;
    };
    for (const auto p : {Params{1000, 300'000}, Params{500, 60'000}, Params{1, 1000}, Params{250, 3'600'000},
                         Params{1000, 1000}, Params{3, 7}}) {
        for (int attempts = 1; attempts <= 100; attempts++) {
            const int64_t ceiling = expected_ceiling(attempts, p.base, p.cap);
            const int64_t floor = p.base / 2;
            int64_t lo = INT64_MAX, hi = INT64_MIN;
            for (int k = 0; k < 500; k++) {
                const int64_t d = backoff_ms(attempts, p.base, p.cap, rng());
                ASSERT_GE(d, floor) << "attempt " << attempts << " base " << p.base;
                ASSERT_LE(d, ceiling) << "attempt " << attempts << " base " << p.base;
                lo = std::min(lo, d);
                hi = std::max(hi, d);
            }
            for (uint64_t r : {uint64_t{0}, uint64_t{1}, UINT64_MAX, UINT64_MAX - 1, uint64_t{1} << 63}) {
                const int64_t d = backoff_ms(attempts, p.base, p.cap, r);
                ASSERT_GE(d, floor);
                ASSERT_LE(d, ceiling);
            }
            // Jitter is spread over the range, not stuck at one end.
            if (ceiling - floor >= 100) {
                EXPECT_LT(lo - floor, (ceiling - floor) / 4) << "attempt " << attempts;
                EXPECT_GT(hi - floor, (ceiling - floor) * 3 / 4) << "attempt " << attempts;
            }
        }
    }
}

TEST(BackoffMs, EndsOfTheRangeAreReachable) {
    for (int attempts = 1; attempts <= 40; attempts++) {
        const int64_t ceiling = expected_ceiling(attempts, 1000, 300'000);
        EXPECT_EQ(backoff_ms(attempts, 1000, 300'000, 0), 500);
        EXPECT_EQ(backoff_ms(attempts, 1000, 300'000, static_cast<uint64_t>(ceiling - 500)), ceiling) << attempts;
    }
}

TEST(BackoffMs, CeilingsAreMonotoneAndReachTheCap) {
    const int64_t base = 1000, cap = 300'000;
    int64_t previous = 0;
    for (int attempts = 1; attempts <= 100; attempts++) {
        const int64_t ceiling = expected_ceiling(attempts, base, cap);
        // The largest delay this attempt can give is exactly the ceiling.
        const int64_t top = backoff_ms(attempts, base, cap, static_cast<uint64_t>(ceiling - base / 2));
        EXPECT_EQ(top, ceiling) << attempts;
        EXPECT_GE(top, previous) << attempts;
        previous = top;
    }
    EXPECT_EQ(previous, cap);
    EXPECT_EQ(expected_ceiling(1, base, cap), 1000);
    EXPECT_EQ(expected_ceiling(2, base, cap), 2000);
    EXPECT_EQ(expected_ceiling(3, base, cap), 4000);
    EXPECT_EQ(expected_ceiling(9, base, cap), 256'000);
    EXPECT_EQ(expected_ceiling(10, base, cap), 300'000);
}

TEST(BackoffMs, NoOverflowForHugeAttemptCounts) {
    std::mt19937_64 rng(99);
    for (int attempts : {31, 32, 63, 64, 65, 1000, 100000, INT_MAX - 1, INT_MAX}) {
        for (int k = 0; k < 200; k++) {
            const int64_t d = backoff_ms(attempts, 1000, 300'000, rng());
            ASSERT_GE(d, 500) << attempts;
            ASSERT_LE(d, 300'000) << attempts;
        }
        // Even with no cap to speak of, the exponent is bounded and nothing wraps.
        const int64_t big = backoff_ms(attempts, 1000, INT64_MAX, UINT64_MAX);
        EXPECT_GE(big, 500) << attempts;
        EXPECT_LE(big, int64_t{1000} << 30) << attempts;
    }
}

TEST(BackoffMs, AttemptZeroOrNegativeBehavesLikeTheFirst) {
    for (int attempts : {0, -1, -1000}) {
        for (uint64_t r : {uint64_t{0}, uint64_t{12345}, UINT64_MAX}) {
            const int64_t d = backoff_ms(attempts, 1000, 300'000, r);
            EXPECT_GE(d, 500);
            EXPECT_LE(d, 1000);
        }
    }
}

// ---------------------------------------------------------------- api_url_problem

TEST(ApiUrlProblem, Usable) {
    for (const char *u :
         {"https://api.bunce.ai/v1", "HTTPS://API.BUNCE.AI/v1", "https://api.bunce.ai/v1/events/trigger",
          "https://10.0.0.1:8443/", "http://127.0.0.1:8080/v1", "http://127.0.0.1", "http://127.0.0.1/",
          "http://127.1.2.3:9/x", "http://localhost/v1", "http://LOCALHOST:8080/v1", "http://localhost",
          "http://localhost?x=1", "http://[::1]:1/", "http://[::1]/v1", "http://[::1]", "Http://127.0.0.1/v1"}) {
        EXPECT_EQ(api_url_problem(u), std::nullopt) << u;
    }
}

TEST(ApiUrlProblem, Refused) {
    for (const char *u : {"http://example.com",
                          "http://example.com/v1",
                          "http://api.bunce.ai/v1",
                          "http://127.0.0.1@evil.com",
                          "http://127.0.0.1:x@evil.com/",
                          "http://user:pw@localhost/",
                          "http://localhost@evil.com/",
                          "http://[::1]@evil.com/",
                          "ftp://127.0.0.1/",
                          "ftp://api.bunce.ai/",
                          "",
                          "http://",
                          "https://",
                          "http://127.evil.com",
                          "http://127.0.0.1.evil.com/",
                          "http://localhost.evil.com/",
                          "http://evil.localhost/",
                          "http://[::2]/",
                          "http://[::1.evil.com]/",
                          "http://0.0.0.0/",
                          "http://10.0.0.1/",
                          "http://192.168.1.1:8080/",
                          "api.bunce.ai/v1",
                          "//api.bunce.ai/v1",
                          "file:///etc/passwd",
                          " https://api.bunce.ai/v1",
                          "http:/127.0.0.1/",
                          "https:/api.bunce.ai",
                          "http://[::1",
                          "http://127.0.0.1.2.3/v1",
                          "http://127.1/",
                          "http://0x7f.0.0.1/",
                          "http://2130706433/",
                          "http://127.0.0.01/",
                          "http://127.0.0.1.nip.io/v1",
                          "http://127.0.0.1:80x/",
                          "http://[::1]x/",
                          "http://[::1]:8a/",
                          "http://127.0.0.1\\@evil.com/",
                          "http://256.0.0.1/",
                          "http://localhost:99999999/"}) {
        const auto p = api_url_problem(u);
        EXPECT_TRUE(p.has_value()) << "\"" << u << "\" accepted";
        if (p) {
            EXPECT_FALSE(p->empty());
        }
    }
}

TEST(ApiUrlProblem, MessagesNameTheProblem) {
    EXPECT_NE(api_url_problem("http://example.com")->find("https://"), std::string::npos);
    EXPECT_NE(api_url_problem("http://127.0.0.1@evil.com")->find("credentials"), std::string::npos);
    EXPECT_NE(api_url_problem("ftp://x/")->find("https://"), std::string::npos);
}

TEST(ApiUrlProblem, EmptyAuthority) {
    for (const char *u : {"http:///v1", "http://?x", "http://#x"}) EXPECT_TRUE(api_url_problem(u).has_value()) << u;
}

// ---------------------------------------------------------------- printable_text

TEST(PrintableText, KeepsUtf8AndBoundsAndCleans) {
    EXPECT_EQ(bunce::printable_text("caf\xc3\xa9 \xe2\x82\xac", 100), "caf\xc3\xa9 \xe2\x82\xac");
    EXPECT_EQ(bunce::printable_text("ab\xff"
                                    "c",
                                    100),
              "ab\xef\xbf\xbd"
              "c");
    EXPECT_EQ(bunce::printable_text(std::string("a\0b\x01", 4), 100), "a b ");
    EXPECT_EQ(bunce::printable_text("line\nnext\ttab", 100), "line\nnext\ttab");
    EXPECT_EQ(bunce::printable_text("\xc3\xa9\xc3\xa9\xc3\xa9", 2), "\xc3\xa9\xc3\xa9");  // characters, not bytes
    EXPECT_EQ(bunce::printable_text("\xed\xa0\x80", 10), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");  // a surrogate
    EXPECT_EQ(bunce::printable_text(std::string(100000, 'x'), 2000).size(), 2000u);
}
