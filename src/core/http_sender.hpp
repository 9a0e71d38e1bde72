// Parallel HTTP POSTs to Bunce through libcurl's multi interface: keep-alive connections,
// up to max_in_flight requests at once, each bounded by a timeout, answers collected as
// data. The caller owns the event loop: it waits for poll_fd() to become readable (an epoll
// set of libcurl's sockets, kept up to date as libcurl asks) or for timeout_ms(), then calls
// on_ready() and on_timeout(), so the worker can wait on its latch and the sockets at once
// with a cost per wake-up that does not grow with the number of connections.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

namespace bunce {

struct HttpRequest {
    int64_t id;  // outbox id, handed back with the answer
    std::string body;
    std::string idempotency_key;
    // Not empty: a GET of this URL instead (no body, no Idempotency-Key), whose answer may be
    // up to max_answer_bytes long.
    std::string get_url = {};
    size_t max_answer_bytes = 64 * 1024;
};

struct HttpAnswer {
    int64_t id;
    long status;  // 0: no HTTP answer (see error)
    std::string body;
    std::string retry_after;  // the Retry-After header, if any
    std::string error;        // transport error (timeout, refused, dropped), if any
    bool timed_out = false;   // the error is the time limit
    double seconds;           // time the request took
};

struct SenderOptions {
    std::string url;  // full URL of POST /events/trigger
    std::string api_key;
    std::string user_agent;
    std::string ca_file;  // empty: the system's CA store
    std::string proxy;    // https only; empty: no proxy, whatever the environment says
    long timeout_ms = 10000;
};

class HttpSender {
public:
    HttpSender();
    ~HttpSender();
    HttpSender(const HttpSender &) = delete;
    HttpSender &operator=(const HttpSender &) = delete;

    // Applies to requests submitted from now on.
    void configure(const SenderOptions &options);

    void submit(HttpRequest request);
    size_t in_flight() const { return in_flight_; }

    // Readable when some socket of a request is ready: then call on_ready().
    int poll_fd() const { return epoll_fd_; }
    // Milliseconds until libcurl needs on_timeout() (-1: no deadline).
    long timeout_ms() const;

    void on_ready();
    void on_timeout();

    // Waits up to max_wait_ms on the sockets itself (for tools without a latch).
    void poll(long max_wait_ms);

    // Answers completed since the last call.
    std::vector<HttpAnswer> take_answers();

    // Drops every request in flight and every answer not yet taken: none of them will be
    // answered. (Their events stay claimed; whoever released them sends them again.)
    void abandon_all();

private:
    struct Transfer;
    void collect();
    void set_options(Transfer &t);
    void set_key_header(Transfer &t, const std::string &key);
    // libcurl calls these from C: they never throw.
    static int socket_cb(void *easy, int fd, int what, void *self, void *socketp) noexcept;
    static int timer_cb(void *multi, long timeout_ms, void *self) noexcept;

    void *multi_;
    SenderOptions options_;
    int epoll_fd_;
    int64_t deadline_us_ = -1;  // monotonic time of libcurl's next timeout
    uint64_t generation_ = 1;   // of options_: counts configure() calls
    size_t in_flight_ = 0;
    std::unordered_set<Transfer *> running_;       // owned, in the multi handle
    std::vector<std::unique_ptr<Transfer>> idle_;  // finished transfers, handles kept for reuse
    std::vector<HttpAnswer> answers_;
};

// Monotonic clock in microseconds.
int64_t monotonic_us();

}  // namespace bunce
