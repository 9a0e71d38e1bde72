#include "http_sender.hpp"

#include <curl/curl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string_view>

namespace bunce {

int64_t monotonic_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

struct HttpSender::Transfer {
    CURL *easy = nullptr;
    curl_slist *headers = nullptr;
    HttpAnswer answer;
    std::string body;  // must outlive the transfer: libcurl does not copy POSTFIELDS
    char error[CURL_ERROR_SIZE];
    curl_slist *key_header = nullptr;  // the Idempotency-Key entry of headers
    uint64_t generation = 0;           // of the options set on easy (0: none yet, or a GET's)
    size_t max_body = 0;               // of the answer kept

    ~Transfer() {
        curl_slist_free_all(headers);
        if (easy) curl_easy_cleanup(easy);
    }

    // libcurl's callbacks are C frames: nothing may unwind through them. A failure ends the
    // transfer (a returned count other than the one given), and the request is retried.
    static size_t on_body(char *data, size_t size, size_t n, void *self) noexcept {
        auto *t = static_cast<Transfer *>(self);
        const size_t max = t->max_body;  // Bunce answers are small; never hoard a big one
        try {
            if (t->answer.body.size() < max)
                t->answer.body.append(data, std::min(size * n, max - t->answer.body.size()));
        } catch (...) {
            return 0;
        }
        return size * n;
    }

    static size_t on_header(char *data, size_t size, size_t n, void *self) noexcept {
        auto *t = static_cast<Transfer *>(self);
        std::string_view line(data, size * n);
        constexpr std::string_view name = "retry-after:";
        if (line.size() <= name.size()) return size * n;
        for (size_t i = 0; i < name.size(); i++)
            if (std::tolower(static_cast<unsigned char>(line[i])) != name[i]) return size * n;
        line.remove_prefix(name.size());
        while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.remove_suffix(1);
        try {
            t->answer.retry_after.assign(line.substr(0, 256));
        } catch (...) {
            return 0;
        }
        return size * n;
    }
};

namespace {
struct CurlGlobal {
    CurlGlobal() {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) throw std::runtime_error("could not initialise libcurl");
    }
};
}  // namespace

HttpSender::HttpSender() {
    static CurlGlobal global;
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd_ < 0) throw std::runtime_error("could not create an epoll set");
    multi_ = curl_multi_init();
    if (!multi_) {
        close(epoll_fd_);
        throw std::runtime_error("could not create a libcurl multi handle");
    }
    curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, &HttpSender::socket_cb);
    curl_multi_setopt(multi_, CURLMOPT_SOCKETDATA, this);
    curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, &HttpSender::timer_cb);
    curl_multi_setopt(multi_, CURLMOPT_TIMERDATA, this);
    // One connection per request in flight, kept alive between requests.
    curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
    curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, 1000L);  // bunce.max_in_flight at most
}

HttpSender::~HttpSender() {
    // Transfers still running are abandoned: their events stay claimed in the outbox and
    // are sent again after the restart that follows.
    abandon_all();
    idle_.clear();
    curl_multi_cleanup(multi_);
    close(epoll_fd_);
}

void HttpSender::configure(const SenderOptions &options) {
    options_ = options;
    generation_++;
    // The key travels in a header: plain http (loopback only) never goes through a proxy.
    if (options_.url.rfind("https://", 0) != 0) options_.proxy.clear();
}

// A handle keeps its options between requests: they are set again only after configure().
void HttpSender::submit(HttpRequest request) {
    std::unique_ptr<Transfer> t;
    if (!idle_.empty()) {
        t = std::move(idle_.back());
        idle_.pop_back();
    } else {
        t = std::make_unique<Transfer>();
        t->easy = curl_easy_init();
        if (!t->easy) throw std::runtime_error("could not create a libcurl handle");
    }
    t->answer = HttpAnswer{request.id, 0, {}, {}, {}, 0};
    t->body = std::move(request.body);
    t->error[0] = '\0';
    t->max_body = request.max_answer_bytes;
    const bool get = !request.get_url.empty();
    if (t->generation != generation_ || get) {
        curl_easy_reset(t->easy);
        set_options(*t);
        t->generation = get ? 0 : generation_;  // a GET's handle is set up again for a POST
    }
    set_key_header(*t, get ? std::string() : request.idempotency_key);
    CURL *e = t->easy;
    if (get) {
        curl_easy_setopt(e, CURLOPT_URL, request.get_url.c_str());
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, t->body.data());
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(t->body.size()));
    }
    if (curl_multi_add_handle(multi_, e) != CURLM_OK) throw std::runtime_error("could not start a request");
    running_.insert(t.release());  // owned through running_ until collect() takes it back
    in_flight_++;
}

void HttpSender::set_options(Transfer &t) {
    t.key_header = nullptr;  // the headers are made again too
    CURL *e = t.easy;
    curl_easy_setopt(e, CURLOPT_URL, options_.url.c_str());
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    // Only the proxy configured here; "" also makes libcurl ignore http_proxy, all_proxy and
    // no_proxy from the server's environment.
    curl_easy_setopt(e, CURLOPT_PROXY, options_.proxy.c_str());
    curl_easy_setopt(e, CURLOPT_NOPROXY, "");
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, options_.user_agent.c_str());
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, options_.timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, std::min(options_.timeout_ms, 10000L));
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);  // never SIGALRM inside a PostgreSQL process
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (!options_.ca_file.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, options_.ca_file.c_str());
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &Transfer::on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &Transfer::on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t.error);
    curl_easy_setopt(e, CURLOPT_PRIVATE, &t);
}

// The headers; the Idempotency-Key is the list's last entry, rewritten in place when the new
// key has the length of the old one (a uuid always has).
void HttpSender::set_key_header(Transfer &t, const std::string &key) {
    // No key: "Idempotency-Key:" with nothing after the colon sends no such header.
    const std::string key_header = key.empty() ? "Idempotency-Key:" : "Idempotency-Key: " + key;
    if (t.key_header && std::strlen(t.key_header->data) == key_header.size()) {
        std::memcpy(t.key_header->data, key_header.data(), key_header.size());
        return;
    }
    curl_slist_free_all(t.headers);
    t.headers = nullptr;
    t.key_header = nullptr;
    for (const std::string &h : {std::string("Content-Type: application/json"), std::string("Accept: application/json"),
                                 "X-Authorization: " + options_.api_key,
                                 std::string("Expect:"),  // no 100-continue round trip
                                 key_header}) {
        curl_slist *l = curl_slist_append(t.headers, h.c_str());
        if (!l) throw std::bad_alloc();
        t.headers = l;
    }
    for (curl_slist *n = t.headers; n; n = n->next) t.key_header = n;
    curl_easy_setopt(t.easy, CURLOPT_HTTPHEADER, t.headers);
}

int HttpSender::socket_cb(void *, int fd, int what, void *self, void *) noexcept {
    auto *s = static_cast<HttpSender *>(self);
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(s->epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);  // gone already if it was closed
        return 0;
    }
    epoll_event ev{};
    ev.events = (what == CURL_POLL_IN || what == CURL_POLL_INOUT ? uint32_t{EPOLLIN} : 0u) |
                (what == CURL_POLL_OUT || what == CURL_POLL_INOUT ? uint32_t{EPOLLOUT} : 0u);
    ev.data.fd = fd;
    // Only ENOMEM could make both fail; the transfer then ends at its timeout and is retried.
    if (epoll_ctl(s->epoll_fd_, EPOLL_CTL_MOD, fd, &ev) != 0) epoll_ctl(s->epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

int HttpSender::timer_cb(void *, long timeout_ms, void *self) noexcept {
    auto *s = static_cast<HttpSender *>(self);
    s->deadline_us_ = timeout_ms < 0 ? -1 : monotonic_us() + timeout_ms * 1000;
    return 0;
}

long HttpSender::timeout_ms() const {
    if (deadline_us_ < 0) return -1;
    const int64_t left = deadline_us_ - monotonic_us();
    return left <= 0 ? 0 : static_cast<long>((left + 999) / 1000);
}

void HttpSender::on_ready() {
    epoll_event events[256];
    const int n = epoll_wait(epoll_fd_, events, 256, 0);
    for (int i = 0; i < n; i++) {
        const uint32_t e = events[i].events;
        const int mask = (e & (EPOLLIN | EPOLLHUP) ? CURL_CSELECT_IN : 0) | (e & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
                         (e & EPOLLERR ? CURL_CSELECT_ERR : 0);
        int running = 0;
        curl_multi_socket_action(multi_, events[i].data.fd, mask, &running);
    }
    collect();
}

void HttpSender::on_timeout() {
    if (timeout_ms() != 0) return;
    deadline_us_ = -1;
    int running = 0;
    curl_multi_socket_action(multi_, CURL_SOCKET_TIMEOUT, 0, &running);
    collect();
}

void HttpSender::poll(long max_wait_ms) {
    long wait = timeout_ms();
    if (wait < 0 || wait > max_wait_ms) wait = max_wait_ms;
    pollfd fd{epoll_fd_, POLLIN, 0};
    if (::poll(&fd, 1, static_cast<int>(wait)) > 0) on_ready();
    on_timeout();
}

void HttpSender::collect() {
    int left = 0;
    while (CURLMsg *msg = curl_multi_info_read(multi_, &left)) {
        if (msg->msg != CURLMSG_DONE) continue;
        Transfer *raw = nullptr;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, reinterpret_cast<char **>(&raw));
        std::unique_ptr<Transfer> t(raw);
        running_.erase(raw);
        const CURLcode result = msg->data.result;
        curl_multi_remove_handle(multi_, t->easy);
        in_flight_--;
        if (result == CURLE_OK) {
            curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->answer.status);
        } else {
            t->answer.status = 0;
            t->answer.error = t->error[0] ? t->error : curl_easy_strerror(result);
            t->answer.timed_out = result == CURLE_OPERATION_TIMEDOUT;
        }
        curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME, &t->answer.seconds);
        // libcurl counts, per handle, the retries on reused connections found dead, and gives
        // up after five; only a reset clears the count. A retry connects anew: a handle that
        // connected is reset before its next use (in the steady state, none is).
        long connects = 0;
        curl_easy_getinfo(t->easy, CURLINFO_NUM_CONNECTS, &connects);
        if (connects > 0) t->generation = 0;
        answers_.push_back(std::move(t->answer));
        std::string().swap(t->body);  // an idle handle keeps no payload-sized buffer
        idle_.push_back(std::move(t));
    }
}

void HttpSender::abandon_all() {
    for (Transfer *t : running_) {
        curl_multi_remove_handle(multi_, t->easy);
        delete t;
    }
    running_.clear();
    in_flight_ = 0;
    answers_.clear();
}

std::vector<HttpAnswer> HttpSender::take_answers() {
    std::vector<HttpAnswer> out;
    out.swap(answers_);
    return out;
}

}  // namespace bunce
