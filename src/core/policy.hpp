// The worker's decisions, as pure functions: what an answer does to its outbox row and to the
// whole sender, and how long the worker may sleep. The glue (src/pg/worker*.cpp) only
// carries them out.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "delivery.hpp"

namespace bunce {

// A pause of the whole sender caused by answers: the key was refused (401/403), or Bunce's
// rate limit was hit (429). Times are microseconds on the caller's clock.
struct SenderPause {
    int64_t until_us = 0;        // 0: not paused by an answer
    int64_t auth_backoff_s = 0;  // the last pause for a refused key; 0 once an event is delivered
    std::string reason;          // for bunce.status and the log
    const char *kind = "";       // what the reason is, in a word: "key_refused" or "rate_limited"
};

struct RetryPolicy {
    int max_attempts;
    int64_t backoff_base_ms;
    int64_t backoff_cap_ms;
};

enum class RowAction {
    remove,       // delivered
    dead_letter,  // refused by Bunce, or out of attempts
    retry,        // back into the queue after retry_delay_ms
};

struct AnswerDecision {
    RowAction action;
    const char *dead_letter_reason;  // dead_letter: "rejected" or "attempts_exhausted"
    int64_t retry_delay_ms;          // retry
    bool attempt_counted;            // retry: false when the key or the rate limit was at fault
};

// One answer's fate. `attempts` counts the attempt just answered; `random` is any 64-bit
// random number (for the backoff's jitter). Updates `pause`:
// - 401/403: the key, not the event, is wrong. The sender pauses 1 min, doubling up to
//   30 min while the key keeps being refused; requests already in flight that answer the
//   same do not extend it. The attempt is not counted; the event retries after the pause.
// - 429: the sender pauses for Retry-After (60 s without one); the attempt is not counted.
// - a success ends the doubling of the key's pause.
// Other transient failures back off (full jitter, at least Retry-After) until max_attempts.
AnswerDecision decide_answer(const Verdict &verdict, long http_status, int attempts,
                             std::optional<int64_t> retry_after_s, const RetryPolicy &policy, int64_t now_us,
                             uint64_t random, SenderPause &pause);

// What the worker waits for between rounds (microseconds on one clock; 0 = none).
struct WaitInputs {
    int64_t now_us;
    int64_t housekeeping_at_us;  // the next housekeeping: the longest wait
    long sender_timeout_ms;      // libcurl's timer, -1 when none
    bool wants_to_claim;         // there may be due events and the worker may send
    int64_t limiter_wait_us;     // > 0: the rate limiter holds the next request this long
    bool has_free_slot;          // fewer requests in flight than bunce.max_in_flight
    int64_t next_due_us;         // the earliest retry coming due
    int64_t paused_until_us;     // the end of a pause
    int64_t stop_deadline_us;    // stopping: requests in flight have until then
    long stats_ms;               // when table statistics want reporting, 0 when not
};

// Milliseconds to sleep: until the earliest of those, 0 when a claim can start now.
long wait_timeout_ms(const WaitInputs &in);

}  // namespace bunce
