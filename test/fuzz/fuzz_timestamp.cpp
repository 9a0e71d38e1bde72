// bunce::normalise_timestamp on arbitrary text: a result is always YYYY-MM-DDTHH:MM:SSZ,
// normalising it again changes nothing, and it is the same instant as the input (checked
// with glibc's timegm, not the core's own calendar code). Inputs of exactly 8 bytes also
// check bunce::format_utc against gmtime_r.
#include <cstdint>
#include <cstring>
#include <ctime>
#include <string>

#include "fuzz_check.hpp"
#include "timestamp.hpp"

namespace {

bool digit(char c) { return c >= '0' && c <= '9'; }

int num(std::string_view s, size_t pos, size_t n) {
    int v = 0;
    for (size_t i = pos; i < pos + n; i++) v = v * 10 + (s[i] - '0');
    return v;
}

// The instant of a date-time YYYY[YY]-MM-DD?HH:MM[:SS] (years past 9999 have more digits),
// timegm's way.
int64_t instant(std::string_view s, bool with_seconds) {
    size_t y = 0;
    while (digit(s[y])) y++;
    struct tm tm = {};
    tm.tm_year = num(s, 0, y) - 1900;
    s.remove_prefix(y - 4);
    tm.tm_mon = num(s, 5, 2) - 1;
    tm.tm_mday = num(s, 8, 2);
    tm.tm_hour = num(s, 11, 2);
    tm.tm_min = num(s, 14, 2);
    tm.tm_sec = with_seconds ? num(s, 17, 2) : 0;
    return static_cast<int64_t>(timegm(&tm));
}

void check_format_utc(const uint8_t *data) {
    int64_t t;
    std::memcpy(&t, data, sizeof t);
    t %= int64_t(400) * 366 * 86400 * 30;  // about ±12000 years around 1970
    const auto got = bunce::format_utc(t);
    struct tm tm;
    const time_t tt = static_cast<time_t>(t);
    FUZZ_CHECK(gmtime_r(&tt, &tm) != nullptr, "gmtime_r failed");
    const long year = tm.tm_year + 1900L;
    if (year < 1 || year > 9999) {
        FUZZ_CHECK(!got, "format_utc gave a value outside years 1..9999");
        return;
    }
    char want[32];
    std::snprintf(want, sizeof want, "%04ld-%02d-%02dT%02d:%02d:%02dZ", year, tm.tm_mon + 1,
                  tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    FUZZ_CHECK(got && *got == want, "format_utc disagrees with gmtime_r");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 8) check_format_utc(data);
    const std::string_view in(reinterpret_cast<const char *>(data), size);
    const auto out = bunce::normalise_timestamp(in);
    if (!out) return 0;
    const std::string &o = *out;

    // The form: exactly YYYY-MM-DDTHH:MM:SSZ.
    static const char pattern[] = "dddd-dd-ddTdd:dd:ddZ";
    FUZZ_CHECK(o.size() == sizeof pattern - 1, "normalised timestamp has the wrong length");
    for (size_t i = 0; i < o.size(); i++)
        FUZZ_CHECK(pattern[i] == 'd' ? digit(o[i]) : o[i] == pattern[i],
                   "normalised timestamp is not YYYY-MM-DDTHH:MM:SSZ");
    FUZZ_CHECK(bunce::normalise_timestamp(o) == out, "normalising is not idempotent");

    // The same instant, fractional seconds truncated. The offset is at the end: Z, ±HH,
    // ±HHMM, ±HH:MM or ±HH:MM:SS.
    size_t year_digits = 0;
    while (digit(in[year_digits])) year_digits++;
    const size_t shift = year_digits - 4;
    const bool with_seconds = in.size() > 16 + shift && in[16 + shift] == ':';
    int64_t offset = 0;
    const char last = in.back();
    if (last != 'Z' && last != 'z') {
        const size_t sign = in.find_last_of("+-");
        FUZZ_CHECK(sign != in.npos && sign >= 16 + shift, "accepted without an offset");
        const std::string_view off = in.substr(sign + 1);
        int hh = num(off, 0, 2), mm = 0, ss = 0;
        if (off.size() == 8) mm = num(off, 3, 2), ss = num(off, 6, 2);
        else if (off.size() == 5) mm = num(off, 3, 2);
        else if (off.size() == 4) mm = num(off, 2, 2);
        else FUZZ_CHECK(off.size() == 2, "odd offset accepted");
        offset = (in[sign] == '+' ? 1 : -1) * (hh * 3600 + mm * 60 + ss);
    }
    const int64_t want = instant(in, with_seconds) - offset;
    FUZZ_CHECK(instant(o, true) == want, "normalised timestamp is a different instant");
    return 0;
}
