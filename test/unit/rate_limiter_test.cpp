// Unit tests for rate_limiter.hpp, on a simulated clock (microseconds).
#include "rate_limiter.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

using bunce::RateLimiter;

namespace {

constexpr int64_t kSecond = 1'000'000;
constexpr int64_t kMinute = 60 * kSecond;
constexpr int64_t kWindow = 60'300'000;  // the limiter's window, 60.3 s

struct Send {
    int64_t at;
    int limit;  // the limit in effect when it was sent
};

// A sender with an endless backlog: sends as soon as it may, for `duration` from `now`.
void run_backlogged(RateLimiter &r, int64_t &now, int64_t duration, std::vector<Send> &out) {
    const int64_t end = now + duration;
    while (true) {
        const int64_t w = r.wait_us(now);
        ASSERT_GE(w, 0);
        if (now + w >= end) {
            now = end;
            return;
        }
        now += w;
        ASSERT_EQ(r.wait_us(now), 0) << "still waiting at the time it said";
        r.record(now);
        out.push_back({now, r.limit()});
    }
}

// For every send, the number of sends in the 60 s window (t - 60 s, t] that ends with it
// must not exceed the limit in effect for that send. Any 60 s window holds at most as many
// sends as the window of the same length ending at its last send.
void expect_no_window_above_limit(const std::vector<Send> &sends) {
    size_t first = 0;
    for (size_t i = 0; i < sends.size(); i++) {
        while (sends[first].at <= sends[i].at - kMinute) first++;
        const int in_window = static_cast<int>(i - first + 1);
        ASSERT_LE(in_window, sends[i].limit) << "window ending at send " << i << " (t=" << sends[i].at << " us) holds "
                                             << in_window << " sends, limit " << sends[i].limit;
    }
}

}  // namespace

TEST(RateLimiter, LimitZeroNeverWaits) {
    RateLimiter r;
    EXPECT_EQ(r.limit(), 0);
    int64_t now = 0;
    for (int i = 0; i < 100000; i++) {
        ASSERT_EQ(r.wait_us(now), 0);
        r.record(now);
        now += (i % 3 == 0) ? 0 : 1;
    }
    EXPECT_EQ(RateLimiter(0).wait_us(123), 0);
}

TEST(RateLimiter, NegativeLimitMeansNoLimit) {
    RateLimiter r(-5);
    EXPECT_EQ(r.limit(), 0);
    for (int i = 0; i < 1000; i++) {
        ASSERT_EQ(r.wait_us(i), 0);
        r.record(i);
    }
    r.set_limit(10);
    EXPECT_EQ(r.limit(), 10);
    r.set_limit(-1);
    EXPECT_EQ(r.limit(), 0);
    EXPECT_EQ(r.wait_us(1000), 0);
}

TEST(RateLimiter, FirstRequestGoesAtOnce) {
    for (int limit : {1, 60, 1000}) {
        for (int64_t now : {int64_t{0}, int64_t{1}, int64_t{5'000'000'000'000}}) {
            RateLimiter r(limit);
            EXPECT_EQ(r.wait_us(now), 0) << limit << " " << now;
        }
    }
}

TEST(RateLimiter, Backlogged60PerMinuteForTenMinutes) {
    RateLimiter r(60);
    int64_t now = 7'777'777'777;  // an arbitrary monotonic clock
    const int64_t start = now;
    std::vector<Send> sends;
    run_backlogged(r, now, 10 * kMinute, sends);
    ASSERT_FALSE(sends.empty());
    expect_no_window_above_limit(sends);

    // Closed windows too: no 61 sends within any 60 s.
    for (size_t i = 60; i < sends.size(); i++) ASSERT_GE(sends[i].at - sends[i - 60].at, kMinute) << i;

    // At least 97% of the limit used, per minute on average.
    const double per_minute = static_cast<double>(sends.size()) / 10.0;
    EXPECT_GE(per_minute, 0.97 * 60) << sends.size() << " sends in 10 minutes";
    EXPECT_LE(per_minute, 60.0);

    // And in every whole minute of the run after the first one.
    for (int m = 1; m < 10; m++) {
        const int64_t a = start + m * kMinute, b = a + kMinute;
        const auto n = std::count_if(sends.begin(), sends.end(), [&](const Send &s) { return s.at >= a && s.at < b; });
        EXPECT_GE(n, 58) << "minute " << m;
        EXPECT_LE(n, 60) << "minute " << m;
    }
}

TEST(RateLimiter, BackloggedAtOtherLimits) {
    for (int limit : {1, 2, 7, 59, 61, 100, 600, 3000}) {
        SCOPED_TRACE("limit " + std::to_string(limit));
        RateLimiter r(limit);
        int64_t now = 1;
        std::vector<Send> sends;
        run_backlogged(r, now, 10 * kMinute, sends);
        expect_no_window_above_limit(sends);
        const double per_minute = static_cast<double>(sends.size()) / 10.0;
        EXPECT_GE(per_minute, 0.97 * limit - (limit < 10 ? 1.0 : 0.0));
        EXPECT_LE(per_minute, static_cast<double>(limit) + 0.1);
    }
}

TEST(RateLimiter, SpacingIsEven) {
    for (int limit : {1, 7, 60, 600, 1000}) {
        SCOPED_TRACE("limit " + std::to_string(limit));
        RateLimiter r(limit);
        int64_t now = 42;
        std::vector<Send> sends;
        run_backlogged(r, now, 5 * kMinute, sends);
        ASSERT_GE(sends.size(), 2u);
        const int64_t spacing = kWindow / limit;
        for (size_t i = 1; i < sends.size(); i++)
            ASSERT_GE(sends[i].at - sends[i - 1].at, spacing) << "sends " << i - 1 << ", " << i;
        // Evenly spaced, not in bursts: a backlogged sender never waits much longer either
        // (at most the rounding remainder of window / limit, under `limit` microseconds).
        for (size_t i = 1; i < sends.size(); i++)
            ASSERT_LE(sends[i].at - sends[i - 1].at, spacing + limit) << "sends " << i - 1 << ", " << i;
    }
}

TEST(RateLimiter, SpacingAfterIdlePeriod) {
    RateLimiter r(60);
    int64_t now = 0;
    r.record(now);
    EXPECT_EQ(r.wait_us(now), 1'005'000);
    EXPECT_EQ(r.wait_us(now + 1'000'000), 5'000);
    EXPECT_EQ(r.wait_us(now + 1'005'000), 0);
    now += 10 * kMinute;  // long idle: may send at once
    EXPECT_EQ(r.wait_us(now), 0);
    r.record(now);
    EXPECT_EQ(r.wait_us(now), 1'005'000);
}

TEST(RateLimiter, LateWakeUpsKeepThePace) {
    // The worker wakes up a little after the time it was given (timer rounding, a claim in
    // progress): the pace stays on the grid, over 99% of the limit, and never above it.
    for (int64_t late : {int64_t{500}, int64_t{3000}, int64_t{20000}}) {
        SCOPED_TRACE("late by " + std::to_string(late) + " us");
        RateLimiter r(500);
        int64_t now = 0;
        std::vector<Send> sends;
        while (now < 10 * kMinute) {
            now += r.wait_us(now) + late;
            ASSERT_EQ(r.wait_us(now), 0);
            r.record(now);
            sends.push_back({now, 500});
        }
        expect_no_window_above_limit(sends);
        size_t first = 0;
        for (size_t i = 0; i < sends.size() && sends[i].at < 9 * kMinute; i++) {
            while (sends[first].at <= sends[i].at - kMinute) first++;
            if (sends[i].at >= 2 * kMinute) {
                ASSERT_GE(i - first + 1, 495u) << "window ending at send " << i;
            }
        }
    }
}

TEST(RateLimiter, JitteredSenderStaysUnderLimit) {
    // A sender that is not always ready: it sends at the allowed time or some time later.
    std::mt19937_64 rng(2024);
    std::uniform_int_distribution<int64_t> idle(0, 3 * kSecond);
    std::bernoulli_distribution busy(0.7);
    RateLimiter r(60);
    int64_t now = 0;
    std::vector<Send> sends;
    while (now < 30 * kMinute) {
        now += r.wait_us(now);
        if (!busy(rng)) now += idle(rng);
        ASSERT_EQ(r.wait_us(now), 0);
        r.record(now);
        sends.push_back({now, 60});
    }
    expect_no_window_above_limit(sends);
}

TEST(RateLimiter, LoweringTheLimitMidRunOpensNoBurst) {
    RateLimiter r(60);
    int64_t now = 1'000'000;
    std::vector<Send> sends;
    run_backlogged(r, now, 3 * kMinute, sends);
    r.set_limit(30);
    run_backlogged(r, now, 3 * kMinute, sends);
    r.set_limit(10);
    run_backlogged(r, now, 3 * kMinute, sends);
    r.set_limit(1);
    run_backlogged(r, now, 5 * kMinute, sends);
    expect_no_window_above_limit(sends);
    // The last phase really runs at the new limit.
    const auto last =
        std::count_if(sends.begin(), sends.end(), [&](const Send &s) { return s.at >= now - 3 * kMinute; });
    EXPECT_GE(last, 2);
    EXPECT_LE(last, 3);
}

TEST(RateLimiter, LoweringAfterABurstWaitsForTheWindow) {
    // 600/min fills 60 sends in about 6 s; switching to 60/min must then hold back until
    // the oldest of the last 60 is a window old, not just one spacing.
    RateLimiter r(600);
    int64_t now = 0;
    std::vector<Send> sends;
    for (int i = 0; i < 100; i++) {
        now += r.wait_us(now);
        r.record(now);
        sends.push_back({now, 600});
    }
    r.set_limit(60);
    const int64_t wait = r.wait_us(now);
    EXPECT_GT(wait, 1'005'000);
    EXPECT_EQ(now + wait, sends[100 - 60].at + kWindow);
    run_backlogged(r, now, 5 * kMinute, sends);
    expect_no_window_above_limit(sends);
}

TEST(RateLimiter, RaisingTheLimitMidRun) {
    RateLimiter r(30);
    int64_t now = 0;
    std::vector<Send> sends;
    run_backlogged(r, now, 3 * kMinute, sends);
    r.set_limit(120);
    run_backlogged(r, now, 3 * kMinute, sends);
    r.set_limit(60);
    run_backlogged(r, now, 3 * kMinute, sends);
    r.set_limit(600);
    run_backlogged(r, now, 2 * kMinute, sends);
    r.set_limit(5);
    run_backlogged(r, now, 3 * kMinute, sends);
    expect_no_window_above_limit(sends);
}

TEST(RateLimiter, RandomLimitChanges) {
    std::mt19937_64 rng(31337);
    std::uniform_int_distribution<int> limit(1, 200);
    std::uniform_int_distribution<int64_t> phase(1, 90 * kSecond);
    RateLimiter r(limit(rng));
    int64_t now = 0;
    std::vector<Send> sends;
    for (int i = 0; i < 60; i++) {
        run_backlogged(r, now, phase(rng), sends);
        r.set_limit(limit(rng));
    }
    ASSERT_GT(sends.size(), 1000u);
    expect_no_window_above_limit(sends);
}

TEST(RateLimiter, SetSameLimitKeepsState) {
    RateLimiter r(60);
    r.record(0);
    const int64_t before = r.wait_us(0);
    r.set_limit(60);
    EXPECT_EQ(r.wait_us(0), before);
}

namespace {

// Senders sharing one limiter, each with a backlog from `from` to `until` (times from the
// start), each waking up `late` after the time it was given. Returns the sends of each.
struct Sharer {
    int64_t from, until, late;
    std::vector<Send> sends;
    int64_t wake = 0;
};

void run_shared(RateLimiter &r, std::vector<Sharer> &senders, int64_t duration) {
    for (auto &s : senders) s.wake = s.from;
    while (true) {
        // The sender that wakes first acts first.
        size_t i = 0;
        for (size_t j = 1; j < senders.size(); j++)
            if (senders[j].wake < senders[i].wake) i = j;
        Sharer &s = senders[i];
        const int64_t now = s.wake;
        if (now >= duration) return;
        if (now >= s.until) {
            r.set_backlogged(static_cast<int>(i), false);
            s.wake = INT64_MAX;
            continue;
        }
        r.set_backlogged(static_cast<int>(i), true);
        const int64_t w = r.take(now, static_cast<int>(i));
        if (w > 0) {
            s.wake = now + w + s.late;
            continue;
        }
        s.sends.push_back({now, r.limit()});
        s.wake = now + s.late;
    }
}

std::vector<Send> all_sends(const std::vector<Sharer> &senders) {
    std::vector<Send> all;
    for (const auto &s : senders) all.insert(all.end(), s.sends.begin(), s.sends.end());
    std::sort(all.begin(), all.end(), [](const Send &a, const Send &b) { return a.at < b.at; });
    return all;
}

int64_t sends_between(const std::vector<Send> &sends, int64_t a, int64_t b) {
    return std::count_if(sends.begin(), sends.end(), [&](const Send &s) { return s.at >= a && s.at < b; });
}

}  // namespace

TEST(RateLimiter, BackloggedSendersShareTheBudgetEvenly) {
    // Two, then three senders; one of them slow to wake up (a claim in progress).
    for (int n : {2, 3}) {
        for (int64_t slow : {int64_t{0}, int64_t{5000}, int64_t{50000}}) {
            SCOPED_TRACE(std::to_string(n) + " senders, one late by " + std::to_string(slow) + " us");
            RateLimiter r(500);
            std::vector<Sharer> senders;
            for (int i = 0; i < n; i++) senders.push_back({0, 10 * kMinute, i == 0 ? slow : 300});
            run_shared(r, senders, 10 * kMinute);
            const std::vector<Send> all = all_sends(senders);
            expect_no_window_above_limit(all);
            for (int m = 1; m < 10; m++) {
                const int64_t a = m * kMinute, b = a + kMinute;
                EXPECT_GE(sends_between(all, a, b), 495) << "minute " << m;  // the whole budget used
                for (int i = 0; i < n; i++)
                    EXPECT_GE(sends_between(senders[i].sends, a, b), 500 / n - 2) << "sender " << i << ", minute " << m;
            }
        }
    }
}

TEST(RateLimiter, AShareNobodyUsesGoesToTheOthers) {
    // Sender 1 is backlogged for the first three minutes only, sender 2 from minute 2 on.
    RateLimiter r(600);
    std::vector<Sharer> senders{{0, 10 * kMinute, 1000}, {0, 3 * kMinute, 1000}, {2 * kMinute, 10 * kMinute, 1000}};
    run_shared(r, senders, 10 * kMinute);
    const std::vector<Send> all = all_sends(senders);
    expect_no_window_above_limit(all);
    for (int m = 0; m < 10; m++) {
        const int64_t a = m * kMinute, b = a + kMinute;
        EXPECT_GE(sends_between(all, a, b), 594) << "minute " << m;
    }
    EXPECT_GE(sends_between(senders[0].sends, kMinute, 2 * kMinute), 297);      // two backlogged
    EXPECT_GE(sends_between(senders[0].sends, 2 * kMinute, 3 * kMinute), 198);  // three
    EXPECT_GE(sends_between(senders[0].sends, 4 * kMinute, 5 * kMinute), 297);  // two again
}

TEST(RateLimiter, ASenderGoneWhileBackloggedCostsNoPace) {
    // A worker that died with its backlog flag set: the others wait a moment each turn, and
    // keep the pace.
    RateLimiter r(500);
    r.set_backlogged(5, true);
    std::vector<Sharer> senders{{0, 10 * kMinute, 300}};
    run_shared(r, senders, 10 * kMinute);
    expect_no_window_above_limit(senders[0].sends);
    for (int m = 1; m < 10; m++)
        EXPECT_GE(sends_between(senders[0].sends, m * kMinute, (m + 1) * kMinute), 495) << "minute " << m;
}
