// Bunce accepts timestamp parameters only as YYYY-MM-DDTHH:MM:SSZ (UTC) and silently drops
// any other form, so every date-time bunce sends is rewritten into exactly that form.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace bunce {

// Seconds since 1970-01-01T00:00:00Z formatted as YYYY-MM-DDTHH:MM:SSZ.
// Empty optional outside years 0001..9999, which the form cannot express.
std::optional<std::string> format_utc(int64_t epoch_seconds);

// A complete ISO-8601 date-time with an explicit offset or Z
// ("2012-09-03T16:30:00.25+02:00", "2012-09-03 16:30:00+02", "2012-09-03T14:30Z")
// converted to UTC in Bunce's form, fractional seconds truncated (never rounded: rounding
// can move a value into the next day). Anything else, including a date alone, a date-time
// without an offset, or an impossible date, gives an empty optional and stays as it is.
// (Also: offsets in seconds, "+00:19:32", as PostgreSQL writes historical zones; second 60, a
// leap second, is the next minute's first.)
std::optional<std::string> normalise_timestamp(std::string_view text);

// The same, telling apart a date-time that Bunce's form cannot express (UTC year outside
// 0001..9999, e.g. PostgreSQL's "10000-01-01T00:00:00+00:00"): it would be dropped by Bunce,
// so it is refused rather than sent.
// A well-formed date-time without an offset is `local`: what it means depends on a time zone.
struct TimestampText {
    enum Kind { other, date_time, local, out_of_range } kind = other;
    std::string utc;  // date_time: YYYY-MM-DDTHH:MM:SSZ
};
TimestampText classify_timestamp(std::string_view text);

// Days since 1970-01-01 of a proleptic Gregorian date (no range check).
int64_t days_from_civil(int64_t year, unsigned month, unsigned day);

}  // namespace bunce
