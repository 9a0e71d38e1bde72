#include "rate_limiter.hpp"

#include <algorithm>

namespace bunce {

void RateLimiter::set_limit(int per_minute) {
    if (per_minute == limit_) return;
    limit_ = std::max(per_minute, 0);
    spacing_us_ = limit_ > 0 ? kWindowUs / limit_ : 0;
    // Keep the history we have, newest first, so a change of limit cannot open a burst.
    std::vector<int64_t> history;
    for (size_t i = 0; i < sent_.size(); i++) history.push_back(sent_[(next_ + sent_.size() - 1 - i) % sent_.size()]);
    sent_.assign(static_cast<size_t>(limit_), INT64_MIN / 2);
    next_ = 0;
    for (size_t i = std::min(history.size(), sent_.size()); i-- > 0;) {
        sent_[next_] = history[i];
        next_ = (next_ + 1) % sent_.size();
    }
}

int64_t RateLimiter::wait_us(int64_t now) const {
    if (limit_ == 0) return 0;
    const int64_t at = std::max(last_us_ + spacing_us_, sent_[next_] + kWindowUs);
    return std::max<int64_t>(at - now, 0);
}

void RateLimiter::record(int64_t now) {
    // Within one spacing of its grid time the request keeps the grid; after a pause, a new
    // grid starts at it.
    last_us_ = now - (last_us_ + spacing_us_) < spacing_us_ ? last_us_ + spacing_us_ : now;
    if (limit_ == 0) return;
    sent_[next_] = now;
    next_ = (next_ + 1) % sent_.size();
}

int RateLimiter::sent_last_minute(int64_t now) const {
    return static_cast<int>(std::count_if(sent_.begin(), sent_.end(), [&](int64_t t) { return t > now - 60'000'000; }));
}

}  // namespace bunce
