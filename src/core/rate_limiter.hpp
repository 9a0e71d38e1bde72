// Keeps the senders of a whole cluster at or under N requests in every 60-second window, evenly
// spaced, so that Bunce's per-IP limit (and its 60 s block) is never triggered by us. One
// limiter serves every worker (it lives in shared memory: fixed size, no pointers), and
// backlogged workers take the turns in rotation, so that each gets its share and a share
// nobody uses goes to those that want it.
#pragma once

#include <cstdint>

namespace bunce {

class RateLimiter {
public:
    static constexpr int kMaxSenders = 64;
    // per_minute = 0: no limit.
    explicit RateLimiter(int per_minute = 0);

    void set_limit(int per_minute);
    int limit() const { return limit_; }

    // Microseconds until `sender` may send the next request (0 = now), times in microseconds
    // of a monotonic clock shared by all senders.
    int64_t wait_us(int64_t now_us, int sender = 0) const;
    void record(int64_t now_us, int sender = 0);
    // wait_us and, when that is 0, record at once (with several senders, the turn must not be
    // another's between the two). Call it when the request is ready to go.
    int64_t take(int64_t now_us, int sender);

    // A sender with a request waiting for its turn: while it has, the others leave it its turns.
    void set_backlogged(int sender, bool backlogged);

private:
    // Requests are spaced window/limit apart, on a grid: a request sent late (the worker woke
    // up a little after its time) does not push the next one later, so a backlogged sender
    // keeps the full pace. The last sends are remembered so that no window of that length
    // ever holds more than the limit, however the spacing was disturbed or the limit changed
    // (above kHistory, the grid alone keeps that). The window is a little over a minute: a
    // request sent early can arrive late, and the server counts arrivals. 60.3 s leaves 99.5%
    // of the limit usable.
    static constexpr int64_t kWindowUs = 60'300'000;
    static constexpr int kHistory = 16384;
    // A turn is kept for half a spacing for the backlogged sender served longest ago: that is
    // late enough for a busy sender, early enough to keep the pace when it does not come.
    int limit_ = 0;
    int64_t spacing_us_ = 0;
    int64_t last_us_ = INT64_MIN / 2;  // the grid time of the last request
    int64_t sent_[kHistory];           // ring of the last send times
    int next_ = 0;
    uint64_t turns_ = 0;               // requests recorded
    uint64_t served_at_[kMaxSenders];  // the turn each sender last had
    bool backlogged_[kMaxSenders];
};

}  // namespace bunce
