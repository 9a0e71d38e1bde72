#include "policy.hpp"

#include <algorithm>
#include <climits>

namespace bunce {

namespace {

constexpr int64_t kUsPerSecond = 1'000'000;
constexpr int64_t kAuthPauseFirstS = 60;
constexpr int64_t kAuthPauseMaxS = 30 * 60;
constexpr int64_t kRateLimitPauseDefaultS = 60;

long ms_until(int64_t t_us, int64_t now_us) {
    if (t_us <= now_us) return 0;
    return static_cast<long>(std::min<int64_t>((t_us - now_us + 999) / 1000, INT_MAX));
}

}  // namespace

AnswerDecision decide_answer(const Verdict &verdict, long http_status, int attempts,
                             std::optional<int64_t> retry_after_s, const RetryPolicy &policy, int64_t now_us,
                             uint64_t random, SenderPause &pause) {
    switch (verdict.outcome) {
        case Outcome::delivered: pause.auth_backoff_s = 0; return {RowAction::remove, nullptr, 0, true};
        case Outcome::rejected: return {RowAction::dead_letter, "rejected", 0, true};
        case Outcome::unauthorized:
            if (pause.until_us <= now_us) {
                pause.auth_backoff_s =
                    pause.auth_backoff_s ? std::min(pause.auth_backoff_s * 2, kAuthPauseMaxS) : kAuthPauseFirstS;
                pause.until_us = now_us + pause.auth_backoff_s * kUsPerSecond;
            }
            pause.reason =
                "Bunce rejected the API key (HTTP " + std::to_string(http_status) + "); set bunce.api_key and reload";
            pause.kind = "key_refused";
            return {RowAction::retry, nullptr, 0, false};
        case Outcome::rate_limited: {
            const int64_t wait_s = retry_after_s && *retry_after_s > 0 ? *retry_after_s : kRateLimitPauseDefaultS;
            pause.until_us = std::max(pause.until_us, now_us + wait_s * kUsPerSecond);
            pause.reason = "Bunce rate limit (HTTP 429), Retry-After " + std::to_string(wait_s) + " s";
            pause.kind = "rate_limited";
            return {RowAction::retry, nullptr, 0, false};
        }
        case Outcome::retry: break;
    }
    if (attempts >= policy.max_attempts) return {RowAction::dead_letter, "attempts_exhausted", 0, true};
    int64_t delay_ms = backoff_ms(attempts, policy.backoff_base_ms, policy.backoff_cap_ms, random);
    if (retry_after_s && *retry_after_s > 0) delay_ms = std::max(delay_ms, *retry_after_s * 1000);
    return {RowAction::retry, nullptr, delay_ms, true};
}

long wait_timeout_ms(const WaitInputs &in) {
    long timeout = ms_until(in.housekeeping_at_us, in.now_us);
    auto until = [&](int64_t t_us) {
        if (t_us) timeout = std::min(timeout, ms_until(t_us, in.now_us));
    };
    if (in.sender_timeout_ms >= 0) timeout = std::min(timeout, in.sender_timeout_ms);
    if (in.wants_to_claim) {
        if (in.limiter_wait_us > 0)
            timeout = std::min<long>(timeout, static_cast<long>((in.limiter_wait_us + 999) / 1000));
        else if (in.has_free_slot)
            timeout = 0;
    }
    until(in.next_due_us);
    until(in.paused_until_us);
    until(in.stop_deadline_us);
    if (in.stats_ms > 0) timeout = std::min(timeout, in.stats_ms);
    return timeout;
}

}  // namespace bunce
