#include "rate_limiter.hpp"

#include <algorithm>
#include <iterator>

namespace bunce {

RateLimiter::RateLimiter(int per_minute) {
    std::fill(std::begin(sent_), std::end(sent_), INT64_MIN / 2);
    std::fill(std::begin(served_at_), std::end(served_at_), 0);
    std::fill(std::begin(backlogged_), std::end(backlogged_), false);
    set_limit(per_minute);
}

void RateLimiter::set_limit(int per_minute) {
    limit_ = std::max(per_minute, 0);
    spacing_us_ = limit_ > 0 ? kWindowUs / limit_ : 0;
}

int64_t RateLimiter::wait_us(int64_t now, int sender) const {
    if (limit_ == 0) return 0;
    int64_t at = last_us_ + spacing_us_;
    if (limit_ <= kHistory) at = std::max(at, sent_[(next_ + kHistory - limit_) % kHistory] + kWindowUs);
    if (at > now) return at - now;
    // The turn is first for the backlogged sender served longest ago, for a moment.
    const int64_t hold = spacing_us_ / 2;
    if (now >= at + hold) return 0;
    for (int s = 0; s < kMaxSenders; s++)
        if (s != sender && backlogged_[s] && served_at_[s] < served_at_[sender]) return at + hold - now;
    return 0;
}

void RateLimiter::record(int64_t now, int sender) {
    // Within one spacing of its grid time the request keeps the grid; after a pause, a new
    // grid starts at it.
    last_us_ = now - (last_us_ + spacing_us_) < spacing_us_ ? last_us_ + spacing_us_ : now;
    sent_[next_] = now;
    next_ = (next_ + 1) % kHistory;
    served_at_[sender] = ++turns_;
}

int64_t RateLimiter::take(int64_t now, int sender) {
    const int64_t wait = wait_us(now, sender);
    if (wait == 0) record(now, sender);
    return wait;
}

void RateLimiter::set_backlogged(int sender, bool backlogged) { backlogged_[sender] = backlogged; }

}  // namespace bunce
