// Keeps the sender at or under N requests in every 60-second window, evenly spaced, so that
// Bunce's per-IP limit (and its 60 s block) is never triggered by us.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace bunce {

class RateLimiter {
public:
    // per_minute = 0: no limit.
    explicit RateLimiter(int per_minute = 0) { set_limit(per_minute); }

    void set_limit(int per_minute);
    int limit() const { return limit_; }

    // Microseconds until the next request may go (0 = now), times in microseconds of a
    // monotonic clock.
    int64_t wait_us(int64_t now_us) const;
    void record(int64_t now_us);

    // Requests recorded in the 60 s before now (for monitoring).
    int sent_last_minute(int64_t now_us) const;

private:
    // Requests are spaced window/limit apart, on a grid: a request sent late (the worker woke
    // up a little after its time) does not push the next one later, so a backlogged sender
    // keeps the full pace. The last `limit` sends are remembered so that no window of that
    // length ever holds more, however the spacing was disturbed. The window is a little over
    // a minute: a request sent early can arrive late, and the server counts arrivals. 60.3 s
    // leaves 99.5% of the limit usable.
    static constexpr int64_t kWindowUs = 60'300'000;
    int limit_ = 0;
    int64_t spacing_us_ = 0;
    int64_t last_us_ = INT64_MIN / 2;  // the grid time of the last request
    std::vector<int64_t> sent_;        // ring of the last `limit_` send times
    size_t next_ = 0;
};

}  // namespace bunce
