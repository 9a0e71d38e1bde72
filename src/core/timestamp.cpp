#include "timestamp.hpp"

#include <cstdio>

namespace bunce {

namespace {

bool is_leap(int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

unsigned days_in_month(int64_t y, unsigned m) {
    static const unsigned days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : days[m - 1];
}

// Reads exactly n digits at pos; false if any is not a digit.
bool digits(std::string_view s, size_t pos, size_t n, int &out) {
    if (pos + n > s.size()) return false;
    int v = 0;
    for (size_t i = pos; i < pos + n; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        v = v * 10 + (s[i] - '0');
    }
    out = v;
    return true;
}

}  // namespace

// Howard Hinnant's days_from_civil.
int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = static_cast<unsigned>(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

std::optional<std::string> format_utc(int64_t t) {
    int64_t days = t / 86400;
    int64_t secs = t % 86400;
    if (secs < 0) {
        secs += 86400;
        days -= 1;
    }
    // Hinnant's civil_from_days.
    const int64_t z = days + 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = static_cast<unsigned>(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    const unsigned d = doy - (153 * mp + 2) / 5 + 1;
    const unsigned m = mp < 10 ? mp + 3 : mp - 9;
    const int64_t y = static_cast<int64_t>(yoe) + era * 400 + (m <= 2);
    if (y < 1 || y > 9999) return std::nullopt;
    char buf[32];
    std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02dZ", static_cast<int>(y), m, d,
                  static_cast<int>(secs / 3600), static_cast<int>(secs / 60 % 60), static_cast<int>(secs % 60));
    return std::string(buf);
}

TimestampText classify_timestamp(std::string_view s) {
    const TimestampText other;
    // Cheap rejection first: this runs on every string value of every payload.
    if (s.size() < 17 || s.size() > 44) return other;
    // Years past 9999 (PostgreSQL's go to 294276) have more digits: a date-time all the same.
    size_t y = 0;
    while (y < s.size() && y < 7 && s[y] >= '0' && s[y] <= '9') y++;
    if (y < 4 || y > 6 || (y > 4 && s[0] == '0') || y + 13 > s.size() || s[y] != '-' || s[y + 3] != '-') return other;
    const size_t extra = y - 4;
    int year = 0, month, day, hour, minute, second = 0;
    for (size_t i = 0; i < y; i++) year = year * 10 + (s[i] - '0');
    s.remove_prefix(extra);  // from here on the positions of a four-digit year
    if (!digits(s, 5, 2, month) || !digits(s, 8, 2, day)) return other;
    if (s.size() < 17 || (s[10] != 'T' && s[10] != 't' && s[10] != ' ')) return other;
    if (!digits(s, 11, 2, hour) || s[13] != ':' || !digits(s, 14, 2, minute)) return other;
    size_t pos = 16;
    bool fraction = false;  // a non-zero fractional second (truncated, never rounded)
    if (pos < s.size() && s[pos] == ':') {
        if (!digits(s, pos + 1, 2, second)) return other;
        pos += 3;
        if (pos < s.size() && (s[pos] == '.' || s[pos] == ',')) {
            size_t start = ++pos;
            while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') fraction |= s[pos++] != '0';
            if (pos == start) return other;
        }
    }
    const bool local = pos >= s.size();  // no offset: local time, meaning unknown here
    int offset = 0;                      // seconds east of UTC
    if (local) {
    } else if (s[pos] == 'Z' || s[pos] == 'z') {
        pos++;
    } else if (s[pos] == '+' || s[pos] == '-') {
        const int sign = s[pos] == '+' ? 1 : -1;
        int oh, om = 0, os = 0;
        if (!digits(s, pos + 1, 2, oh)) return other;
        pos += 3;
        if (pos < s.size() && s[pos] == ':') {
            if (!digits(s, pos + 1, 2, om)) return other;
            pos += 3;
            // Historical zones have offsets in seconds: PostgreSQL writes +00:19:32.
            if (pos < s.size() && s[pos] == ':') {
                if (!digits(s, pos + 1, 2, os)) return other;
                pos += 3;
            }
        } else if (pos + 2 == s.size()) {
            if (!digits(s, pos, 2, om)) return other;
            pos += 2;
        }
        if (oh > 15 || om > 59 || os > 59) return other;
        offset = sign * (oh * 3600 + om * 60 + os);
    } else {
        return other;
    }
    if (pos != s.size()) return other;

    if (year < 1 || month < 1 || month > 12 || day < 1 ||
        static_cast<unsigned>(day) > days_in_month(year, static_cast<unsigned>(month)))
        return other;
    // 24:00:00 is the end of the day (ISO 8601); nothing later than that. Second 60 is a leap
    // second, as PostgreSQL reads it: the first second of the next minute.
    if (hour == 24 ? (minute != 0 || second != 0 || fraction) : (hour > 23 || minute > 59 || second > 60)) return other;
    // (PostgreSQL, which reads a local one, takes second 60 but not a fraction of it.)
    if (local) return second == 60 && fraction ? other : TimestampText{TimestampText::local, {}};

    const int64_t t = days_from_civil(year, static_cast<unsigned>(month), static_cast<unsigned>(day)) * 86400 +
                      hour * 3600 + minute * 60 + second - offset;
    auto utc = format_utc(t);
    if (!utc) return {TimestampText::out_of_range, {}};
    return {TimestampText::date_time, std::move(*utc)};
}

std::optional<std::string> normalise_timestamp(std::string_view text) {
    TimestampText t = classify_timestamp(text);
    if (t.kind != TimestampText::date_time) return std::nullopt;
    return std::move(t.utc);
}

}  // namespace bunce
