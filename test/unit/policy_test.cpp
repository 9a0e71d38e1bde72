// Unit tests for policy.hpp: decide_answer and wait_timeout_ms.
#include "policy.hpp"

#include <gtest/gtest.h>

#include <algorithm>

namespace bunce {
namespace {

constexpr int64_t kSec = 1'000'000;
const RetryPolicy kPolicy{5, 1000, 600'000};

Verdict verdict(Outcome o) { return {o, ""}; }

AnswerDecision answer(Outcome o, SenderPause &pause, int attempts = 1, std::optional<int64_t> retry_after = {},
                      int64_t now = 1000 * kSec, long status = 0, uint64_t random = 0) {
    return decide_answer(verdict(o), status, attempts, retry_after, kPolicy, now, random, pause);
}

TEST(DecideAnswer, DeliveredIsRemovedAndEndsTheKeyBackoff) {
    SenderPause pause;
    pause.auth_backoff_s = 240;
    const AnswerDecision d = answer(Outcome::delivered, pause);
    EXPECT_EQ(d.action, RowAction::remove);
    EXPECT_EQ(pause.auth_backoff_s, 0);
}

TEST(DecideAnswer, RejectedBecomesADeadLetterAtOnce) {
    SenderPause pause;
    const AnswerDecision d = answer(Outcome::rejected, pause, 1);
    EXPECT_EQ(d.action, RowAction::dead_letter);
    EXPECT_STREQ(d.dead_letter_reason, "rejected");
    EXPECT_EQ(pause.until_us, 0);
}

TEST(DecideAnswer, TransientFailuresBackOffUntilAttemptsRunOut) {
    SenderPause pause;
    for (int attempts = 1; attempts < kPolicy.max_attempts; attempts++) {
        const AnswerDecision d = answer(Outcome::retry, pause, attempts, {}, 0, 503, ~0ULL);
        EXPECT_EQ(d.action, RowAction::retry) << attempts;
        EXPECT_TRUE(d.attempt_counted);
        EXPECT_GE(d.retry_delay_ms, 500);
        EXPECT_LE(d.retry_delay_ms, std::min<int64_t>(600'000, 1000LL << (attempts - 1)));
    }
    const AnswerDecision last = answer(Outcome::retry, pause, kPolicy.max_attempts);
    EXPECT_EQ(last.action, RowAction::dead_letter);
    EXPECT_STREQ(last.dead_letter_reason, "attempts_exhausted");
    EXPECT_EQ(pause.until_us, 0) << "a failing event never pauses the sender";
}

TEST(DecideAnswer, RetryAfterIsAFloorForTheBackoff) {
    SenderPause pause;
    EXPECT_EQ(answer(Outcome::retry, pause, 1, 120).retry_delay_ms, 120'000);
    EXPECT_LE(answer(Outcome::retry, pause, 1, 0).retry_delay_ms, 1000) << "0 is no floor";
}

TEST(DecideAnswer, RefusedKeyPausesTheSenderDoublingToHalfAnHour) {
    SenderPause pause;
    int64_t now = 1000 * kSec;
    const int64_t expected_s[] = {60, 120, 240, 480, 960, 1800, 1800};
    for (int64_t s : expected_s) {
        const AnswerDecision d = answer(Outcome::unauthorized, pause, 3, {}, now, 401);
        EXPECT_EQ(d.action, RowAction::retry);
        EXPECT_FALSE(d.attempt_counted) << "the key, not the event, was wrong";
        EXPECT_EQ(d.retry_delay_ms, 0);
        EXPECT_EQ(pause.until_us, now + s * kSec);
        EXPECT_NE(pause.reason.find("HTTP 401"), std::string::npos) << pause.reason;
        now = pause.until_us;  // the pause ran out; the next try is refused again
    }
}

TEST(DecideAnswer, RequestsInFlightDuringAKeyPauseDoNotExtendIt) {
    SenderPause pause;
    const int64_t now = 1000 * kSec;
    answer(Outcome::unauthorized, pause, 1, {}, now, 403);
    const int64_t until = pause.until_us;
    answer(Outcome::unauthorized, pause, 1, {}, now + kSec, 403);
    EXPECT_EQ(pause.until_us, until);
    EXPECT_EQ(pause.auth_backoff_s, 60);
}

TEST(DecideAnswer, RateLimitPausesForRetryAfterOrAMinute) {
    SenderPause pause;
    const int64_t now = 1000 * kSec;
    AnswerDecision d = answer(Outcome::rate_limited, pause, 2, 30, now, 429);
    EXPECT_EQ(d.action, RowAction::retry);
    EXPECT_FALSE(d.attempt_counted);
    EXPECT_EQ(pause.until_us, now + 30 * kSec);
    EXPECT_NE(pause.reason.find("Retry-After 30 s"), std::string::npos) << pause.reason;
    answer(Outcome::rate_limited, pause, 2, {}, now, 429);
    EXPECT_EQ(pause.until_us, now + 60 * kSec);
    answer(Outcome::rate_limited, pause, 2, 5, now, 429);
    EXPECT_EQ(pause.until_us, now + 60 * kSec) << "a shorter Retry-After never shortens a pause";
}

TEST(DecideAnswer, ThePauseSaysWhatCausedIt) {
    // A 429 after a key pause (its backoff still remembered), and a 401 during a 429 pause:
    // the kind follows the reason, whatever came before.
    SenderPause pause;
    const int64_t now = 1000 * kSec;
    answer(Outcome::unauthorized, pause, 1, {}, now, 401);
    EXPECT_STREQ(pause.kind, "key_refused");
    answer(Outcome::rate_limited, pause, 1, 30, now + 61 * kSec, 429);
    EXPECT_STREQ(pause.kind, "rate_limited");
    EXPECT_GT(pause.auth_backoff_s, 0);
    answer(Outcome::unauthorized, pause, 1, {}, now + 62 * kSec, 403);
    EXPECT_STREQ(pause.kind, "key_refused");
    EXPECT_NE(pause.reason.find("API key"), std::string::npos) << pause.reason;
}

WaitInputs idle(int64_t now) {
    WaitInputs in{};
    in.now_us = now;
    in.housekeeping_at_us = now + kSec;
    in.sender_timeout_ms = -1;
    return in;
}

TEST(WaitTimeout, IdleWaitsForHousekeeping) {
    EXPECT_EQ(wait_timeout_ms(idle(10 * kSec)), 1000);
    WaitInputs late = idle(10 * kSec);
    late.housekeeping_at_us = 9 * kSec;
    EXPECT_EQ(wait_timeout_ms(late), 0);
}

TEST(WaitTimeout, TheEarliestDeadlineWins) {
    const int64_t now = 10 * kSec;
    WaitInputs in = idle(now);
    in.sender_timeout_ms = 700;
    EXPECT_EQ(wait_timeout_ms(in), 700);
    in.next_due_us = now + 300'500;  // rounded up: never wake before it is due
    EXPECT_EQ(wait_timeout_ms(in), 301);
    in.paused_until_us = now + 200'000;
    EXPECT_EQ(wait_timeout_ms(in), 200);
    in.stop_deadline_us = now + 100'000;
    EXPECT_EQ(wait_timeout_ms(in), 100);
    in.stats_ms = 50;
    EXPECT_EQ(wait_timeout_ms(in), 50);
}

TEST(WaitTimeout, ClaimingStartsAtOnceUnlessTheLimiterOrTheSlotsHoldIt) {
    const int64_t now = 10 * kSec;
    WaitInputs in = idle(now);
    in.wants_to_claim = true;
    in.has_free_slot = true;
    EXPECT_EQ(wait_timeout_ms(in), 0);
    in.limiter_wait_us = 2500;
    EXPECT_EQ(wait_timeout_ms(in), 3);
    in.limiter_wait_us = 0;
    in.has_free_slot = false;  // all slots busy: wait for an answer
    EXPECT_EQ(wait_timeout_ms(in), 1000);
    in.wants_to_claim = false;
    in.has_free_slot = true;
    EXPECT_EQ(wait_timeout_ms(in), 1000);
}

}  // namespace
}  // namespace bunce
