// What bunce.metrics counts in shared memory besides the totals: the answers by class, and
// the time from enqueue to a 2xx as a histogram.
#pragma once

namespace bunce {

// The `class` label of bunce_answers_total.
enum class AnswerClass {
    success,       // "2xx"
    client_error,  // "4xx": any 4xx but those below
    unauthorized,  // "401": 401 or 403, the key refused
    rate_limited,  // "429"
    server_error,  // "5xx": 5xx, or a status that is none of the above
    timeout,       // "timeout": bunce.request_timeout passed without an answer
    connection,    // "connection": refused, reset, dropped, name not resolved, TLS failed
};
constexpr int kAnswerClasses = 7;
AnswerClass answer_class(long http_status, bool timed_out);
const char *answer_class_label(AnswerClass c);

// The upper bounds (seconds) of the latency buckets; a last one, +Inf, holds the rest.
constexpr double kLatencyBounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800};
constexpr int kLatencyBuckets = sizeof kLatencyBounds / sizeof kLatencyBounds[0] + 1;
// The bucket a latency falls in (the first whose bound is at least it).
int latency_bucket(double seconds);

}  // namespace bunce
