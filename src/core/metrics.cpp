#include "metrics.hpp"

namespace bunce {

AnswerClass answer_class(long status, bool timed_out) {
    if (status == 0) return timed_out ? AnswerClass::timeout : AnswerClass::connection;
    if (status >= 200 && status < 300) return AnswerClass::success;
    if (status == 401 || status == 403) return AnswerClass::unauthorized;
    if (status == 429) return AnswerClass::rate_limited;
    if (status >= 400 && status < 500) return AnswerClass::client_error;
    return AnswerClass::server_error;
}

const char *answer_class_label(AnswerClass c) {
    switch (c) {
        case AnswerClass::success: return "2xx";
        case AnswerClass::client_error: return "4xx";
        case AnswerClass::unauthorized: return "401";
        case AnswerClass::rate_limited: return "429";
        case AnswerClass::server_error: return "5xx";
        case AnswerClass::timeout: return "timeout";
        case AnswerClass::connection: return "connection";
    }
    return "5xx";
}

int latency_bucket(double seconds) {
    int b = 0;
    while (b < kLatencyBuckets - 1 && seconds > kLatencyBounds[b]) b++;
    return b;
}

}  // namespace bunce
