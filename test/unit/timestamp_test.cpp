// Unit tests for timestamp.hpp: normalise_timestamp, format_utc, days_from_civil.
#include "timestamp.hpp"

#include <gtest/gtest.h>

#include <climits>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

using bunce::days_from_civil;
using bunce::format_utc;
using bunce::normalise_timestamp;

namespace {

struct Case {
    const char *input;
    const char *expected;  // nullptr: normalise_timestamp must give an empty optional
};

void expect_cases(const std::vector<Case> &cases) {
    for (const auto &c : cases) {
        SCOPED_TRACE(std::string("input: \"") + c.input + "\"");
        const auto got = normalise_timestamp(c.input);
        if (c.expected == nullptr) {
            EXPECT_FALSE(got.has_value()) << "got " << *got;
        } else {
            ASSERT_TRUE(got.has_value());
            EXPECT_EQ(*got, c.expected);
        }
    }
}

int64_t epoch(int64_t y, unsigned m, unsigned d, int hh = 0, int mm = 0, int ss = 0) {
    return days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss;
}

}  // namespace

// ---------------------------------------------------------------- days_from_civil

TEST(DaysFromCivil, KnownDates) {
    EXPECT_EQ(days_from_civil(1970, 1, 1), 0);
    EXPECT_EQ(days_from_civil(1970, 1, 2), 1);
    EXPECT_EQ(days_from_civil(1969, 12, 31), -1);
    EXPECT_EQ(days_from_civil(2000, 2, 29), 11016);
    EXPECT_EQ(days_from_civil(2000, 3, 1), 11017);
    EXPECT_EQ(days_from_civil(2001, 9, 9), 11574);
    EXPECT_EQ(days_from_civil(0, 3, 1), -719468);
    EXPECT_EQ(days_from_civil(1, 1, 1), -719162);
}

// ---------------------------------------------------------------- format_utc

TEST(FormatUtc, EpochAndKnownValues) {
    EXPECT_EQ(format_utc(0), "1970-01-01T00:00:00Z");
    EXPECT_EQ(format_utc(1'000'000'000), "2001-09-09T01:46:40Z");
    EXPECT_EQ(format_utc(951'782'400), "2000-02-29T00:00:00Z");
    EXPECT_EQ(format_utc(epoch(2024, 12, 31, 23, 59, 59)), "2024-12-31T23:59:59Z");
}

TEST(FormatUtc, NegativeEpoch) {
    EXPECT_EQ(format_utc(-1), "1969-12-31T23:59:59Z");
    EXPECT_EQ(format_utc(-86'399), "1969-12-31T00:00:01Z");
    EXPECT_EQ(format_utc(-86'400), "1969-12-31T00:00:00Z");
    EXPECT_EQ(format_utc(-86'401), "1969-12-30T23:59:59Z");
    EXPECT_EQ(format_utc(epoch(1900, 3, 1, 12, 34, 56)), "1900-03-01T12:34:56Z");
    EXPECT_EQ(format_utc(epoch(1600, 2, 29, 0, 0, 0)), "1600-02-29T00:00:00Z");
}

TEST(FormatUtc, YearBounds) {
    const int64_t first = epoch(1, 1, 1);
    const int64_t last = epoch(9999, 12, 31, 23, 59, 59);
    EXPECT_EQ(format_utc(first), "0001-01-01T00:00:00Z");
    EXPECT_EQ(format_utc(last), "9999-12-31T23:59:59Z");
    EXPECT_EQ(format_utc(first - 1), std::nullopt);
    EXPECT_EQ(format_utc(last + 1), std::nullopt);
    EXPECT_EQ(format_utc(first - 86'400 * 366), std::nullopt);
    EXPECT_EQ(format_utc(last + 86'400 * 366), std::nullopt);
    EXPECT_EQ(format_utc(INT64_MAX), std::nullopt);
    EXPECT_EQ(format_utc(INT64_MIN), std::nullopt);
}

TEST(FormatUtc, AgreesWithDaysFromCivilForManyDates) {
    std::mt19937_64 rng(12345);
    std::uniform_int_distribution<int64_t> dist(epoch(1, 1, 1), epoch(9999, 12, 31, 23, 59, 59));
    for (int i = 0; i < 20000; i++) {
        const int64_t t = dist(rng);
        const auto s = format_utc(t);
        ASSERT_TRUE(s.has_value()) << t;
        ASSERT_EQ(s->size(), 20u) << *s;
        const int64_t y = std::stoll(s->substr(0, 4));
        const unsigned m = static_cast<unsigned>(std::stoi(s->substr(5, 2)));
        const unsigned d = static_cast<unsigned>(std::stoi(s->substr(8, 2)));
        const int hh = std::stoi(s->substr(11, 2)), mm = std::stoi(s->substr(14, 2)), ss = std::stoi(s->substr(17, 2));
        ASSERT_EQ(epoch(y, m, d, hh, mm, ss), t) << *s;
        // Bunce's form is a fixed point of the normaliser.
        ASSERT_EQ(normalise_timestamp(*s), s);
    }
}

// ---------------------------------------------------------------- normalise_timestamp

TEST(NormaliseTimestamp, OffsetsWithColon) {
    expect_cases({
        {"2024-05-01T10:00:00+05:45", "2024-05-01T04:15:00Z"},
        {"2024-05-01T10:00:00-03:30", "2024-05-01T13:30:00Z"},
        {"2024-05-01T10:00:00+02:00", "2024-05-01T08:00:00Z"},
        {"2024-05-01T10:00:00+00:00", "2024-05-01T10:00:00Z"},
        {"2024-05-01T10:00:00-00:00", "2024-05-01T10:00:00Z"},
        {"2024-05-01T10:00:00+15:59", "2024-04-30T18:01:00Z"},
        {"2024-05-01T10:00:00-15:00", "2024-05-02T01:00:00Z"},
        {"2024-05-01T10:00:00+14:00", "2024-04-30T20:00:00Z"},
        {"2024-05-01T10:00:00-12:00", "2024-05-01T22:00:00Z"},
    });
}

TEST(NormaliseTimestamp, OffsetsWithoutColonAndHoursOnly) {
    expect_cases({
        {"2024-05-01T10:00:00+0545", "2024-05-01T04:15:00Z"},
        {"2024-05-01T10:00:00-0330", "2024-05-01T13:30:00Z"},
        {"2024-05-01T10:00:00+05", "2024-05-01T05:00:00Z"},
        {"2024-05-01T10:00:00-03", "2024-05-01T13:00:00Z"},
        {"2024-05-01T10:00:00+00", "2024-05-01T10:00:00Z"},
    });
}

TEST(NormaliseTimestamp, ZuluAndSeparators) {
    expect_cases({
        {"2024-05-01T10:00:00z", "2024-05-01T10:00:00Z"},
        {"2024-05-01t10:00:00Z", "2024-05-01T10:00:00Z"},
        {"2024-05-01t10:00:00z", "2024-05-01T10:00:00Z"},
        {"2024-05-01 10:00:00Z", "2024-05-01T10:00:00Z"},
        {"2024-05-01 10:00:00+02", "2024-05-01T08:00:00Z"},
        {"2012-09-03 16:30:00+02", "2012-09-03T14:30:00Z"},
    });
}

TEST(NormaliseTimestamp, AlreadyNormalisedIsReturnedUnchanged) {
    for (const char *s : {"2024-05-01T10:00:00Z", "1970-01-01T00:00:00Z", "0001-01-01T00:00:00Z",
                          "9999-12-31T23:59:59Z", "2024-02-29T23:59:59Z"}) {
        const auto got = normalise_timestamp(s);
        ASSERT_TRUE(got.has_value()) << s;
        EXPECT_EQ(*got, s);
    }
}

TEST(NormaliseTimestamp, MinutesOnlyForm) {
    expect_cases({
        {"2024-05-01T10:00Z", "2024-05-01T10:00:00Z"},
        {"2012-09-03T14:30Z", "2012-09-03T14:30:00Z"},
        {"2024-05-01T10:00+02:00", "2024-05-01T08:00:00Z"},
        {"2024-05-01T10:00-0330", "2024-05-01T13:30:00Z"},
        {"2024-05-01 10:00+05", "2024-05-01T05:00:00Z"},
    });
}

TEST(NormaliseTimestamp, RolloverAcrossDayMonthYear) {
    expect_cases({
        {"2024-12-31T23:30:00-01:00", "2025-01-01T00:30:00Z"},
        {"2025-01-01T00:30:00+01:00", "2024-12-31T23:30:00Z"},
        {"2024-03-01T01:00:00+02:00", "2024-02-29T23:00:00Z"},
        {"2023-03-01T01:00:00+02:00", "2023-02-28T23:00:00Z"},
        {"2024-02-28T23:00:00-02:00", "2024-02-29T01:00:00Z"},
        {"2023-02-28T23:00:00-02:00", "2023-03-01T01:00:00Z"},
        {"2024-01-31T23:00:00-02:00", "2024-02-01T01:00:00Z"},
        {"2024-04-30T22:00:00-03:00", "2024-05-01T01:00:00Z"},
        {"2024-05-01T00:00:00+00:01", "2024-04-30T23:59:00Z"},
        {"1970-01-01T00:00:00+01:00", "1969-12-31T23:00:00Z"},
        {"2000-03-01T00:00:00+05:45", "2000-02-29T18:15:00Z"},
        {"2100-03-01T00:00:00+01:00", "2100-02-28T23:00:00Z"},
    });
}

TEST(NormaliseTimestamp, LeapYears) {
    expect_cases({
        {"2024-02-29T12:00:00Z", "2024-02-29T12:00:00Z"},
        {"2000-02-29T12:00:00Z", "2000-02-29T12:00:00Z"},
        {"1600-02-29T12:00:00Z", "1600-02-29T12:00:00Z"},
        {"2023-02-29T12:00:00Z", nullptr},
        {"1900-02-29T12:00:00Z", nullptr},
        {"2100-02-29T12:00:00Z", nullptr},
        {"2024-02-30T12:00:00Z", nullptr},
        {"2023-02-28T12:00:00Z", "2023-02-28T12:00:00Z"},
    });
}

TEST(NormaliseTimestamp, DaysPerMonth) {
    const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    for (int m = 1; m <= 12; m++) {
        char last[32], past[32];
        std::snprintf(last, sizeof last, "2023-%02d-%02dT00:00:00Z", m, days[m - 1]);
        std::snprintf(past, sizeof past, "2023-%02d-%02dT00:00:00Z", m, days[m - 1] + 1);
        EXPECT_EQ(normalise_timestamp(last), std::string(last));
        EXPECT_EQ(normalise_timestamp(past), std::nullopt) << past;
    }
}

TEST(NormaliseTimestamp, FractionalSecondsAreTruncatedNeverRounded) {
    expect_cases({
        {"2024-12-31T23:59:59.999Z", "2024-12-31T23:59:59Z"},
        {"2024-12-31T23:59:59.999999999Z", "2024-12-31T23:59:59Z"},
        {"2024-12-31T23:59:59.5+00:00", "2024-12-31T23:59:59Z"},
        {"2024-12-31T23:59:59,9Z", "2024-12-31T23:59:59Z"},
        {"2012-09-03T16:30:00.25+02:00", "2012-09-03T14:30:00Z"},
        {"2024-05-01T10:00:00.0Z", "2024-05-01T10:00:00Z"},
        {"2024-05-01T10:00:00.123456-0330", "2024-05-01T13:30:00Z"},
        {"2024-05-01T10:00:00.1+05", "2024-05-01T05:00:00Z"},
    });
}

TEST(NormaliseTimestamp, EndOfDay2400) {
    expect_cases({
        {"2024-05-01T24:00:00Z", "2024-05-02T00:00:00Z"},
        {"2024-12-31T24:00:00Z", "2025-01-01T00:00:00Z"},
        {"2024-02-28T24:00:00Z", "2024-02-29T00:00:00Z"},
        {"2024-05-01T24:00Z", "2024-05-02T00:00:00Z"},
        {"2024-05-01T24:00:00+02:00", "2024-05-01T22:00:00Z"},
        {"2024-05-01T24:00:01Z", nullptr},
        {"2024-05-01T24:01:00Z", nullptr},
        {"2024-05-01T24:59:59Z", nullptr},
        {"2024-05-01T25:00:00Z", nullptr},
    });
}

TEST(NormaliseTimestamp, EndOfDayWithFractionIsLaterThanEndOfDay) {
    expect_cases({
        {"2024-05-01T24:00:00.5Z", nullptr},
        {"2024-05-01T24:00:00.000001Z", nullptr},
    });
}

TEST(NormaliseTimestamp, NoOffsetIsLocalTimeAndStaysAsItIs) {
    expect_cases({
        {"2024-05-01T10:00:00", nullptr},
        {"2024-05-01 10:00:00", nullptr},
        {"2024-05-01T10:00:00.123", nullptr},
        {"2024-05-01T10:00:00.123456789", nullptr},
        {"2024-05-01T10:00", nullptr},
        {"2024-05-01 10:00", nullptr},
    });
}

TEST(NormaliseTimestamp, DateOnlyAndShortStrings) {
    expect_cases({
        {"2024-05-01", nullptr},
        {"2024-05-01Z", nullptr},
        {"2024-05-01+02:00", nullptr},
        {"", nullptr},
        {"Z", nullptr},
        {"10:00:00Z", nullptr},
        {"2024-05", nullptr},
    });
}

TEST(NormaliseTimestamp, TimestampInsideOtherText) {
    expect_cases({
        {"order of 2024-05-01T10:00:00Z", nullptr},
        {"2024-05-01T10:00:00Z is the date", nullptr},
        {" 2024-05-01T10:00:00Z", nullptr},
        {"2024-05-01T10:00:00Z ", nullptr},
        {"2024-05-01T10:00:00Z\n", nullptr},
        {"\"2024-05-01T10:00:00Z\"", nullptr},
        {"2024-05-01T10:00:00Z/2024-05-02T10:00:00Z", nullptr},
    });
}

TEST(NormaliseTimestamp, ImpossibleFields) {
    expect_cases({
        {"2024-13-01T10:00:00Z", nullptr},
        {"2024-00-01T10:00:00Z", nullptr},
        {"2024-05-32T10:00:00Z", nullptr},
        {"2024-05-00T10:00:00Z", nullptr},
        {"2024-04-31T10:00:00Z", nullptr},
        {"2024-05-01T25:00:00Z", nullptr},
        {"2024-05-01T10:60:00Z", nullptr},
        {"2024-05-01T10:00:61Z", nullptr},
        {"2024-05-01T10:00:99Z", nullptr},
        {"2024-05-01T10:00:00+16:00", nullptr},
        {"2024-05-01T10:00:00-16:00", nullptr},
        {"2024-05-01T10:00:00+1600", nullptr},
        {"2024-05-01T10:00:00+16", nullptr},
        {"2024-05-01T10:00:00+99", nullptr},
        {"2024-05-01T10:00:00+05:60", nullptr},
        {"2024-05-01T10:00:00+0560", nullptr},
        {"0000-01-01T00:00:00Z", nullptr},
    });
}

TEST(NormaliseTimestamp, TrailingCharacters) {
    expect_cases({
        {"2024-05-01T10:00:00Zx", nullptr},
        {"2024-05-01T10:00:00ZZ", nullptr},
        {"2024-05-01T10:00:00+02:00x", nullptr},
        {"2024-05-01T10:00:00+02:00Z", nullptr},
        {"2024-05-01T10:00:00+02:00:00x", nullptr},
        {"2024-05-01T10:00:00+02:00:0", nullptr},
        {"2024-05-01T10:00:00+02:00:60", nullptr},
        {"2024-05-01T10:00:00+02:001", nullptr},
        {"2024-05-01T10:00:00+05450", nullptr},
        {"2024-05-01T10:00:00+02 ", nullptr},
        {"2024-05-01T10:00:00.5Z.5", nullptr},
    });
}

TEST(NormaliseTimestamp, MissingDigits) {
    expect_cases({
        {"2024-5-01T10:00:00Z", nullptr},
        {"2024-05-1T10:00:00Z", nullptr},
        {"24-05-01T10:00:00Z", nullptr},
        {"2024-05-01T1:00:00Z", nullptr},
        {"2024-05-01T10:0:00Z", nullptr},
        {"2024-05-01T10:00:0Z", nullptr},
        {"2024-05-01T10:00:Z", nullptr},
        {"2024-05-01T10:00:00+2:00", nullptr},
        {"2024-05-01T10:00:00+02:0", nullptr},
        {"2024-05-01T10:00:00+020", nullptr},
        {"2024-05-01T10:00:00+0", nullptr},
        {"2024-05-01T10:00:00+", nullptr},
        {"2024-05-01T10:00:00-", nullptr},
        {"2024-05-01T10:00:00+:00", nullptr},
    });
}

TEST(NormaliseTimestamp, LettersOrPunctuationInPlaceOfDigits) {
    expect_cases({
        {"2024-O5-01T10:00:00Z", nullptr},      {"202a-05-01T10:00:00Z", nullptr},
        {"2024-05-0lT10:00:00Z", nullptr},      {"2024-05-01T1O:00:00Z", nullptr},
        {"2024-05-01T10:o0:00Z", nullptr},      {"2024-05-01T10:00:0OZ", nullptr},
        {"2024-05-01T10:00:00+O2:00", nullptr}, {"2024-05-01T10:00:00+02:x0", nullptr},
        {"2024-05-01T10:00:00.xZ", nullptr},    {"2024-05-01T10:00:00.Z", nullptr},
        {"2024-05-01T10:00:00,Z", nullptr},     {"2024-05-01T10:00:00.+02:00", nullptr},
        {"2024-05-01X10:00:00Z", nullptr},      {"2024-05-01_10:00:00Z", nullptr},
        {"2024/05/01T10:00:00Z", nullptr},      {"2024-05-01T10-00-00Z", nullptr},
        {"2024-05-01T10.00.00Z", nullptr},      {"2024-05-01T10:00:00 +02:00", nullptr},
        {"2024-05-01T10:00:00 Z", nullptr},     {"2024-05-01T10:00:00UTC", nullptr},
        {"2024-05-01T10:00:00GMT", nullptr},    {"-024-05-01T10:00:00Z", nullptr},
        {"+2024-05-01T10:00:00Z", nullptr},
    });
}

TEST(NormaliseTimestamp, YearBounds) {
    expect_cases({
        {"0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"},
        {"0001-01-01T00:30:00+01:00", nullptr},
        {"0001-01-01T00:30:00-01:00", "0001-01-01T01:30:00Z"},
        {"9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"},
        {"9999-12-31T23:30:00-01:00", nullptr},
        {"9999-12-31T24:00:00Z", nullptr},
        {"9999-12-31T23:30:00+01:00", "9999-12-31T22:30:00Z"},
    });
}

TEST(NormaliseTimestamp, RandomOffsetsAgreeWithArithmetic) {
    std::mt19937_64 rng(777);
    std::uniform_int_distribution<int64_t> when(epoch(1900, 1, 1), epoch(2200, 1, 1));
    std::uniform_int_distribution<int> off_h(0, 15), off_m(0, 59), sign(0, 1);
    for (int i = 0; i < 5000; i++) {
        const int64_t utc = when(rng);
        const int oh = off_h(rng), om = off_m(rng);
        const int s = sign(rng) ? 1 : -1;
        const int64_t offset = s * (oh * 3600 + om * 60);
        const int64_t local = utc + offset;
        const std::string local_text = format_utc(local)->substr(0, 19);
        char suffix[16];
        std::snprintf(suffix, sizeof suffix, "%c%02d:%02d", s > 0 ? '+' : '-', oh, om);
        const std::string text = local_text + suffix;
        ASSERT_EQ(normalise_timestamp(text), format_utc(utc)) << text;
    }
}

// PostgreSQL's own JSON of a timestamptz in a zone with a historical offset in seconds
// (TimeZone = Europe/Amsterdam before 1937), and leap seconds as PostgreSQL reads them.
TEST(NormaliseTimestamp, OffsetsInSecondsAndLeapSeconds) {
    expect_cases({
        {"1900-06-01T12:19:32+00:19:32", "1900-06-01T12:00:00Z"},
        {"1900-06-01T12:19:32.5+00:19:32", "1900-06-01T12:00:00Z"},
        {"1900-06-01T00:00:00-00:19:32", "1900-06-01T00:19:32Z"},
        {"2016-12-31T23:59:60Z", "2017-01-01T00:00:00Z"},
        {"2016-12-31T23:59:60.999+00:00", "2017-01-01T00:00:00Z"},
        {"2024-05-01T10:00:60+02:00", "2024-05-01T08:01:00Z"},
    });
}

// A date-time that Bunce's form cannot hold is told apart from text that is no date-time.
TEST(ClassifyTimestamp, OutOfRangeIsNotOther) {
    using bunce::classify_timestamp;
    using bunce::TimestampText;
    for (const char *s : {"10000-01-01T00:00:00+00:00", "294276-12-31T23:59:59Z", "0001-01-01T00:30:00+01:00",
                          "9999-12-31T23:30:00-01:00", "586554-01-18T00:00:00+00:00"})
        EXPECT_EQ(classify_timestamp(s).kind, TimestampText::out_of_range) << s;
    for (const char *s : {"1000000-01-01T00:00:00Z", "10000-01-01", "abc", "12024-13-01T00:00:00Z",
                          "2024-02-30T10:00:00", "2024-05-01T25:00"})
        EXPECT_EQ(classify_timestamp(s).kind, TimestampText::other) << s;
    // Without an offset: a date-time all the same, whose meaning needs a time zone.
    for (const char *s :
         {"2024-05-01T10:00:00", "2024-05-01 10:00:59", "2024-05-01T10:00:00.5", "10000-01-01T00:00:00"})
        EXPECT_EQ(classify_timestamp(s).kind, TimestampText::local) << s;
    EXPECT_EQ(classify_timestamp("2024-05-01T10:00:00+02").utc, "2024-05-01T08:00:00Z");
}
