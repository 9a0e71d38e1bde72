// Unit tests for http_sender.hpp against a tiny HTTP/1.1 server running in a thread of the
// test (POSIX sockets on 127.0.0.1, an ephemeral port).
#include "http_sender.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "delivery.hpp"

using bunce::HttpAnswer;
using bunce::HttpRequest;
using bunce::HttpSender;
using bunce::SenderOptions;

namespace {

std::string lower(std::string s) {
    for (auto &c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

struct ReceivedRequest {
    std::string method;
    std::string target;
    std::multimap<std::string, std::string> headers;  // lower-case names, trimmed values
    std::string body;
    int connection;  // 1, 2, ...: which accepted connection it came on

    std::string header(const std::string &name) const {
        auto it = headers.find(name);
        return it == headers.end() ? std::string() : it->second;
    }
    bool has_header(const std::string &name) const { return headers.count(name) > 0; }
};

std::string http_response(int status, const std::string &body, const std::string &extra_headers = "") {
    return "HTTP/1.1 " + std::to_string(status) + " Canned\r\n" + "Content-Type: application/json\r\n" +
           "Content-Length: " + std::to_string(body.size()) + "\r\n" + extra_headers + "\r\n" + body;
}

// Answers each complete request with what the responder returns; std::nullopt means never
// answer (the connection stays open and silent).
class TestServer {
public:
    using Responder = std::function<std::optional<std::string>(const ReceivedRequest &)>;

    explicit TestServer(Responder responder) : responder_(std::move(responder)) {
        listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (listen_fd_ < 0) throw std::runtime_error("socket");
        int one = 1;
        ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = 0;
        if (::bind(listen_fd_, reinterpret_cast<sockaddr *>(&addr), sizeof addr) != 0 || ::listen(listen_fd_, 64) != 0)
            throw std::runtime_error("bind/listen");
        socklen_t len = sizeof addr;
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr *>(&addr), &len);
        port_ = ntohs(addr.sin_port);
        if (::pipe2(wake_, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
        thread_ = std::thread([this] { run(); });
    }

    ~TestServer() {
        const char c = 'x';
        (void)!::write(wake_[1], &c, 1);
        thread_.join();
        for (auto &[fd, conn] : clients_) ::close(fd);
        ::close(listen_fd_);
        ::close(wake_[0]);
        ::close(wake_[1]);
    }

    int port() const { return port_; }
    std::string url(const std::string &path = "/v1/events/trigger") const {
        return "http://127.0.0.1:" + std::to_string(port_) + path;
    }
    int connections() const { return accepted_.load(); }
    std::vector<ReceivedRequest> requests() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return requests_;
    }

private:
    struct Client {
        int number;
        std::string in;
    };

    void run() {
        while (true) {
            std::vector<pollfd> fds{{wake_[0], POLLIN, 0}, {listen_fd_, POLLIN, 0}};
            for (const auto &[fd, conn] : clients_) fds.push_back({fd, POLLIN, 0});
            // Bounded wait; the destructor wakes it through the pipe anyway.
            if (::poll(fds.data(), fds.size(), 1000) < 0) continue;
            if (fds[0].revents) return;
            if (fds[1].revents & POLLIN) {
                const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
                if (fd >= 0) clients_[fd] = Client{++accepted_, {}};
            }
            for (size_t i = 2; i < fds.size(); i++) {
                if (!fds[i].revents) continue;
                const int fd = fds[i].fd;
                char buf[16384];
                const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
                if (n <= 0) {
                    ::close(fd);
                    clients_.erase(fd);
                    continue;
                }
                Client &c = clients_[fd];
                c.in.append(buf, static_cast<size_t>(n));
                serve(fd, c);
            }
        }
    }

    // Handles every complete request buffered on a connection.
    void serve(int fd, Client &c) {
        while (true) {
            const size_t end = c.in.find("\r\n\r\n");
            if (end == std::string::npos) return;
            ReceivedRequest r;
            r.connection = c.number;
            size_t line_end = c.in.find("\r\n");
            const std::string request_line = c.in.substr(0, line_end);
            const size_t sp1 = request_line.find(' ');
            const size_t sp2 = request_line.find(' ', sp1 + 1);
            r.method = request_line.substr(0, sp1);
            r.target = request_line.substr(sp1 + 1, sp2 - sp1 - 1);
            size_t pos = line_end + 2;
            while (pos < end) {
                const size_t eol = c.in.find("\r\n", pos);
                const std::string line = c.in.substr(pos, eol - pos);
                const size_t colon = line.find(':');
                std::string value = line.substr(colon + 1);
                value.erase(0, value.find_first_not_of(" \t"));
                value.erase(value.find_last_not_of(" \t") + 1);
                r.headers.emplace(lower(line.substr(0, colon)), value);
                pos = eol + 2;
            }
            const std::string length = r.header("content-length");
            const size_t body_size = length.empty() ? 0 : std::stoul(length);
            if (c.in.size() < end + 4 + body_size) return;  // body not all here yet
            r.body = c.in.substr(end + 4, body_size);
            c.in.erase(0, end + 4 + body_size);
            {
                std::lock_guard<std::mutex> lock(mutex_);
                requests_.push_back(r);
            }
            if (auto reply = responder_(r)) {
                size_t sent = 0;
                while (sent < reply->size()) {
                    const ssize_t n = ::send(fd, reply->data() + sent, reply->size() - sent, MSG_NOSIGNAL);
                    if (n <= 0) break;
                    sent += static_cast<size_t>(n);
                }
            }
        }
    }

    Responder responder_;
    int listen_fd_ = -1;
    int wake_[2] = {-1, -1};
    int port_ = 0;
    std::atomic<int> accepted_{0};
    std::map<int, Client> clients_;  // server thread only
    mutable std::mutex mutex_;
    std::vector<ReceivedRequest> requests_;
    std::thread thread_;
};

SenderOptions options_for(const std::string &url, long timeout_ms = 3000) {
    SenderOptions o;
    o.url = url;
    o.api_key = "test-api-key-123";
    o.user_agent = "bunce-unit-test/1.0";
    o.timeout_ms = timeout_ms;
    return o;
}

// Drives the sender with poll() until `count` answers arrived or `max_ms` passed.
std::vector<HttpAnswer> drive(HttpSender &sender, size_t count, long max_ms = 4000) {
    std::vector<HttpAnswer> answers;
    const int64_t deadline = bunce::monotonic_us() + max_ms * 1000;
    while (answers.size() < count && bunce::monotonic_us() < deadline) {
        sender.poll(50);
        for (auto &a : sender.take_answers()) answers.push_back(std::move(a));
    }
    return answers;
}

const HttpAnswer *find_answer(const std::vector<HttpAnswer> &answers, int64_t id) {
    for (const auto &a : answers)
        if (a.id == id) return &a;
    return nullptr;
}

const ReceivedRequest *find_request(const std::vector<ReceivedRequest> &requests, const std::string &key) {
    for (const auto &r : requests)
        if (r.header("idempotency-key") == key) return &r;
    return nullptr;
}

std::string trim(std::string s) {
    s.erase(0, s.find_first_not_of(" \t"));
    s.erase(s.find_last_not_of(" \t") + 1);
    return s;
}

// A port on 127.0.0.1 with nothing listening (bound, then closed).
int closed_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr);
    socklen_t len = sizeof addr;
    ::getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len);
    ::close(fd);
    return ntohs(addr.sin_port);
}

// Canned answers chosen by the Idempotency-Key.
std::optional<std::string> canned(const ReceivedRequest &r) {
    const std::string key = r.header("idempotency-key");
    if (key == "k-ok") return http_response(200, R"({"success":true,"message":"Event triggered"})");
    if (key == "k-created") return http_response(201, R"({"success":true})");
    if (key == "k-bad") return http_response(422, R"({"success":false,"message":"email is invalid"})");
    if (key == "k-auth") return http_response(401, R"({"success":false,"message":"Invalid API key"})");
    if (key == "k-limit")
        return http_response(429, R"({"success":false,"message":"Too many requests"})", "Retry-After: 120\r\n");
    if (key == "k-limit-lower") return http_response(429, "", "retry-after:7\r\n");
    if (key == "k-down") return http_response(503, "<html>Service Unavailable</html>");
    if (key == "k-empty") return http_response(200, "");
    if (key == "k-big") return http_response(200, std::string(100 * 1024, 'b'));
    return http_response(200, R"({"success":true,"message":"default"})");
}

}  // namespace

TEST(HttpSender, SeveralRequestsInParallel) {
    TestServer server(canned);
    HttpSender sender;
    sender.configure(options_for(server.url()));

    const std::vector<std::pair<std::string, std::string>> sent = {
        {"k-ok", R"({"email":"ada@example.com","amount":120.5})"},
        {"k-created", R"({"customer":{"customer_id":"42"}})"},
        {"k-bad", R"({"email":"nope"})"},
        {"k-auth", R"({"email":"b@example.com"})"},
        {"k-limit", R"({"email":"c@example.com"})"},
        {"k-down", R"({"email":"d@example.com","note":"\u00e9 caf\u00e9"})"},
        {"k-empty", "{}"},
    };
    for (size_t i = 0; i < sent.size(); i++)
        sender.submit(HttpRequest{static_cast<int64_t>(100 + i), sent[i].second, sent[i].first});
    EXPECT_EQ(sender.in_flight(), sent.size());

    const auto answers = drive(sender, sent.size());
    ASSERT_EQ(answers.size(), sent.size());
    EXPECT_EQ(sender.in_flight(), 0u);
    EXPECT_TRUE(sender.take_answers().empty());

    struct Expect {
        long status;
        std::string body;
        bunce::Outcome outcome;
    };
    const std::vector<Expect> expected = {
        {200, R"({"success":true,"message":"Event triggered"})", bunce::Outcome::delivered},
        {201, R"({"success":true})", bunce::Outcome::delivered},
        {422, R"({"success":false,"message":"email is invalid"})", bunce::Outcome::rejected},
        {401, R"({"success":false,"message":"Invalid API key"})", bunce::Outcome::unauthorized},
        {429, R"({"success":false,"message":"Too many requests"})", bunce::Outcome::rate_limited},
        {503, "<html>Service Unavailable</html>", bunce::Outcome::retry},
        {200, "", bunce::Outcome::delivered},
    };
    for (size_t i = 0; i < sent.size(); i++) {
        SCOPED_TRACE(sent[i].first);
        const HttpAnswer *a = find_answer(answers, static_cast<int64_t>(100 + i));
        ASSERT_NE(a, nullptr);
        EXPECT_EQ(a->status, expected[i].status);
        EXPECT_EQ(a->body, expected[i].body);
        EXPECT_TRUE(a->error.empty()) << a->error;
        EXPECT_GE(a->seconds, 0.0);
        EXPECT_LT(a->seconds, 4.0);
        EXPECT_EQ(bunce::classify(a->status, a->body, a->error).outcome, expected[i].outcome);
        if (sent[i].first == "k-limit") {
            EXPECT_EQ(trim(a->retry_after), "120");
            EXPECT_EQ(bunce::parse_retry_after(a->retry_after, 0), 120);
        } else {
            EXPECT_TRUE(a->retry_after.empty()) << a->retry_after;
        }
    }

    // What the server saw.
    const auto requests = server.requests();
    ASSERT_EQ(requests.size(), sent.size());
    for (const auto &[key, body] : sent) {
        SCOPED_TRACE(key);
        const ReceivedRequest *r = find_request(requests, key);
        ASSERT_NE(r, nullptr);
        EXPECT_EQ(r->method, "POST");
        EXPECT_EQ(r->target, "/v1/events/trigger");
        EXPECT_EQ(r->header("x-authorization"), "test-api-key-123");
        EXPECT_EQ(r->header("idempotency-key"), key);
        EXPECT_EQ(r->header("content-type"), "application/json");
        EXPECT_EQ(r->header("user-agent"), "bunce-unit-test/1.0");
        EXPECT_EQ(r->header("accept"), "application/json");
        EXPECT_EQ(r->header("content-length"), std::to_string(body.size()));
        EXPECT_FALSE(r->has_header("expect")) << "no 100-continue round trip";
        EXPECT_EQ(r->headers.count("x-authorization"), 1u);
        EXPECT_EQ(r->headers.count("content-type"), 1u);
        EXPECT_EQ(r->body, body);
    }
}

TEST(HttpSender, RetryAfterHeaderIsCaseInsensitive) {
    TestServer server(canned);
    HttpSender sender;
    sender.configure(options_for(server.url()));
    sender.submit(HttpRequest{1, "{}", "k-limit-lower"});
    const auto answers = drive(sender, 1);
    ASSERT_EQ(answers.size(), 1u);
    EXPECT_EQ(answers[0].status, 429);
    EXPECT_EQ(trim(answers[0].retry_after), "7");
    EXPECT_EQ(bunce::parse_retry_after(answers[0].retry_after, 0), 7);
}

TEST(HttpSender, KeepAliveReusesOneConnection) {
    TestServer server(canned);
    HttpSender sender;
    sender.configure(options_for(server.url()));
    for (int i = 0; i < 6; i++) {
        const std::string body = R"({"email":"ada@example.com","n":)" + std::to_string(i) + "}";
        sender.submit(HttpRequest{i, body, "k-ok-" + std::to_string(i)});
        const auto answers = drive(sender, 1);
        ASSERT_EQ(answers.size(), 1u) << "request " << i;
        EXPECT_EQ(answers[0].id, i);
        EXPECT_EQ(answers[0].status, 200);
        EXPECT_EQ(answers[0].body, R"({"success":true,"message":"default"})");
        EXPECT_EQ(sender.in_flight(), 0u);
    }
    EXPECT_EQ(server.connections(), 1);
    const auto requests = server.requests();
    ASSERT_EQ(requests.size(), 6u);
    for (int i = 0; i < 6; i++) {
        EXPECT_EQ(requests[i].connection, 1);
        EXPECT_EQ(requests[i].header("idempotency-key"), "k-ok-" + std::to_string(i));
        EXPECT_EQ(requests[i].body, R"({"email":"ada@example.com","n":)" + std::to_string(i) + "}");
    }
}

TEST(HttpSender, ClosedPortGivesStatusZeroWithError) {
    const int port = closed_port();
    HttpSender sender;
    sender.configure(options_for("http://127.0.0.1:" + std::to_string(port) + "/v1/events/trigger"));
    sender.submit(HttpRequest{7, "{}", "k"});
    const auto answers = drive(sender, 1);
    ASSERT_EQ(answers.size(), 1u);
    EXPECT_EQ(answers[0].id, 7);
    EXPECT_EQ(answers[0].status, 0);
    EXPECT_FALSE(answers[0].error.empty());
    EXPECT_FALSE(answers[0].timed_out);
    EXPECT_TRUE(answers[0].body.empty());
    const auto v = bunce::classify(answers[0].status, answers[0].body, answers[0].error);
    EXPECT_EQ(v.outcome, bunce::Outcome::retry);
    EXPECT_EQ(v.message, answers[0].error);
    EXPECT_EQ(sender.in_flight(), 0u);
}

TEST(HttpSender, SilentServerHitsTheTimeout) {
    TestServer server([](const ReceivedRequest &) { return std::nullopt; });
    HttpSender sender;
    sender.configure(options_for(server.url(), /*timeout_ms=*/300));
    const int64_t start = bunce::monotonic_us();
    sender.submit(HttpRequest{9, R"({"email":"ada@example.com"})", "k-silent"});
    const auto answers = drive(sender, 1, 3000);
    const int64_t elapsed_ms = (bunce::monotonic_us() - start) / 1000;
    ASSERT_EQ(answers.size(), 1u) << "no answer after " << elapsed_ms << " ms";
    EXPECT_EQ(answers[0].id, 9);
    EXPECT_EQ(answers[0].status, 0);
    EXPECT_FALSE(answers[0].error.empty());
    EXPECT_TRUE(answers[0].timed_out);
    EXPECT_GE(elapsed_ms, 250);
    EXPECT_LT(elapsed_ms, 2000);
    EXPECT_GE(answers[0].seconds, 0.25);
    EXPECT_EQ(bunce::classify(answers[0].status, answers[0].body, answers[0].error).outcome, bunce::Outcome::retry);
    // The request did reach the server.
    ASSERT_EQ(server.requests().size(), 1u);
    EXPECT_EQ(server.requests()[0].body, R"({"email":"ada@example.com"})");
}

TEST(HttpSender, LargeAnswerIsCappedAt64KiB) {
    TestServer server(canned);
    HttpSender sender;
    sender.configure(options_for(server.url()));
    sender.submit(HttpRequest{1, "{}", "k-big"});
    const auto answers = drive(sender, 1);
    ASSERT_EQ(answers.size(), 1u);
    EXPECT_EQ(answers[0].status, 200);
    EXPECT_EQ(answers[0].body.size(), 64u * 1024);
    EXPECT_EQ(answers[0].body, std::string(64 * 1024, 'b'));
}

TEST(HttpSender, LargeRequestBodyIsSentWhole) {
    TestServer server(canned);
    HttpSender sender;
    sender.configure(options_for(server.url()));
    std::string body = R"({"email":"ada@example.com","blob":")" + std::string(200 * 1024, 'q') + "\"}";
    sender.submit(HttpRequest{1, body, "k-ok"});
    body += "";  // the sender keeps its own copy
    const auto answers = drive(sender, 1);
    ASSERT_EQ(answers.size(), 1u);
    EXPECT_EQ(answers[0].status, 200);
    ASSERT_EQ(server.requests().size(), 1u);
    EXPECT_EQ(server.requests()[0].body, body);
}

TEST(HttpSender, SubmittedBodyMayGoOutOfScope) {
    TestServer server(canned);
    HttpSender sender;
    sender.configure(options_for(server.url()));
    {
        HttpRequest r{5, R"({"email":"scoped@example.com"})", "k-ok"};
        sender.submit(r);
        r.body.assign(r.body.size(), 'X');  // clobber the caller's copy
    }
    const auto answers = drive(sender, 1);
    ASSERT_EQ(answers.size(), 1u);
    ASSERT_EQ(server.requests().size(), 1u);
    EXPECT_EQ(server.requests()[0].body, R"({"email":"scoped@example.com"})");
}

TEST(HttpSender, ConfigureAppliesToLaterRequests) {
    TestServer server(canned);
    HttpSender sender;
    sender.configure(options_for(server.url()));
    sender.submit(HttpRequest{1, "{}", "k-a"});
    SenderOptions second = options_for(server.url("/other/path"));
    second.api_key = "second-key";
    second.user_agent = "second-agent/2";
    sender.configure(second);
    sender.submit(HttpRequest{2, "{}", "k-b"});
    const auto answers = drive(sender, 2);
    ASSERT_EQ(answers.size(), 2u);
    const auto requests = server.requests();
    const ReceivedRequest *a = find_request(requests, "k-a");
    const ReceivedRequest *b = find_request(requests, "k-b");
    ASSERT_NE(a, nullptr);
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(a->header("x-authorization"), "test-api-key-123");
    EXPECT_EQ(a->header("user-agent"), "bunce-unit-test/1.0");
    EXPECT_EQ(a->target, "/v1/events/trigger");
    EXPECT_EQ(b->header("x-authorization"), "second-key");
    EXPECT_EQ(b->header("user-agent"), "second-agent/2");
    EXPECT_EQ(b->target, "/other/path");
}

TEST(HttpSender, ReusedHandlesCarryNoStaleState) {
    // A reused transfer must not keep the previous answer's Retry-After or headers.
    TestServer server(canned);
    HttpSender sender;
    sender.configure(options_for(server.url()));
    sender.submit(HttpRequest{1, "{}", "k-limit"});
    auto answers = drive(sender, 1);
    ASSERT_EQ(answers.size(), 1u);
    EXPECT_EQ(trim(answers[0].retry_after), "120");
    sender.submit(HttpRequest{2, R"({"x":1})", "k-ok"});
    answers = drive(sender, 1);
    ASSERT_EQ(answers.size(), 1u);
    EXPECT_EQ(answers[0].id, 2);
    EXPECT_EQ(answers[0].status, 200);
    EXPECT_TRUE(answers[0].retry_after.empty()) << answers[0].retry_after;
    EXPECT_EQ(answers[0].body, R"({"success":true,"message":"Event triggered"})");
    const auto requests = server.requests();
    ASSERT_EQ(requests.size(), 2u);
    EXPECT_EQ(requests[1].headers.count("idempotency-key"), 1u);
    EXPECT_EQ(requests[1].headers.count("x-authorization"), 1u);
    EXPECT_EQ(requests[1].body, R"({"x":1})");
}

TEST(HttpSender, ReusedHandleTakesEachKeyAndLaterSettings) {
    // One handle, reused: keys of the same length (rewritten in place) and of another length
    // (headers made again), then new settings; every request carries its own values once.
    TestServer server(canned);
    HttpSender sender;
    sender.configure(options_for(server.url()));
    for (const char *key : {"key-0001", "key-0002", "a-longer-key-0003"}) {
        sender.submit(HttpRequest{1, "{}", key});
        ASSERT_EQ(drive(sender, 1).size(), 1u);
    }
    SenderOptions second = options_for(server.url("/other/path"));
    second.api_key = "second-key";
    sender.configure(second);
    sender.submit(HttpRequest{2, "{}", "key-0004"});
    ASSERT_EQ(drive(sender, 1).size(), 1u);
    const auto requests = server.requests();
    ASSERT_EQ(requests.size(), 4u);
    const char *expected[] = {"key-0001", "key-0002", "a-longer-key-0003", "key-0004"};
    for (size_t i = 0; i < 4; i++) {
        EXPECT_EQ(requests[i].headers.count("idempotency-key"), 1u) << i;
        EXPECT_EQ(requests[i].header("idempotency-key"), expected[i]);
        EXPECT_EQ(requests[i].headers.count("x-authorization"), 1u) << i;
        EXPECT_EQ(requests[i].connection, 1) << "one kept-alive connection: request " << i;
    }
    EXPECT_EQ(requests[2].header("x-authorization"), "test-api-key-123");
    EXPECT_EQ(requests[3].header("x-authorization"), "second-key");
    EXPECT_EQ(requests[3].target, "/other/path");
}

TEST(HttpSender, ExternalEventLoop) {
    // The worker's way: wait on poll_fd() itself, then on_ready() and on_timeout().
    TestServer server(canned);
    HttpSender sender;
    sender.configure(options_for(server.url()));
    for (int i = 0; i < 3; i++) sender.submit(HttpRequest{i, "{}", "k-ok"});
    std::vector<HttpAnswer> answers;
    const int64_t deadline = bunce::monotonic_us() + 4'000'000;
    while (answers.size() < 3 && bunce::monotonic_us() < deadline) {
        long wait = sender.timeout_ms();
        if (wait < 0 || wait > 50) wait = 50;
        pollfd fd{sender.poll_fd(), POLLIN, 0};
        if (::poll(&fd, 1, static_cast<int>(wait)) > 0) sender.on_ready();
        if (sender.timeout_ms() == 0) sender.on_timeout();
        for (auto &a : sender.take_answers()) answers.push_back(std::move(a));
    }
    ASSERT_EQ(answers.size(), 3u);
    std::set<int64_t> ids;
    for (const auto &a : answers) {
        EXPECT_EQ(a.status, 200);
        ids.insert(a.id);
    }
    EXPECT_EQ(ids, (std::set<int64_t>{0, 1, 2}));
    EXPECT_EQ(sender.in_flight(), 0u);
}

TEST(HttpSender, DestroyedWithRequestsInFlight) {
    TestServer server([](const ReceivedRequest &) { return std::nullopt; });
    {
        HttpSender sender;
        sender.configure(options_for(server.url(), 5000));
        for (int i = 0; i < 3; i++) sender.submit(HttpRequest{i, "{}", "k"});
        // Get the requests onto the wire, then abandon them.
        const int64_t deadline = bunce::monotonic_us() + 2'000'000;
        while (server.requests().size() < 3 && bunce::monotonic_us() < deadline) sender.poll(20);
        EXPECT_EQ(sender.in_flight(), 3u);
        EXPECT_TRUE(sender.take_answers().empty());
    }
    EXPECT_EQ(server.requests().size(), 3u);
}

TEST(HttpSender, AbandonedRequestsAreNeverAnswered) {
    TestServer server([](const ReceivedRequest &r) -> std::optional<std::string> {
        if (r.header("idempotency-key") == "k-silent") return std::nullopt;
        return http_response(200, R"({"success":true})");
    });
    HttpSender sender;
    sender.configure(options_for(server.url(), 5000));
    sender.submit(HttpRequest{1, "{}", "k-silent"});
    sender.submit(HttpRequest{2, "{}", "k-ok"});
    const int64_t deadline = bunce::monotonic_us() + 2'000'000;
    while (server.requests().size() < 2 && bunce::monotonic_us() < deadline) sender.poll(20);
    sender.poll(50);  // the answer to 2 arrives and waits to be taken
    sender.abandon_all();
    EXPECT_EQ(sender.in_flight(), 0u);
    EXPECT_TRUE(sender.take_answers().empty());
    // The sender still works, and nothing of the abandoned requests comes back.
    sender.submit(HttpRequest{3, "{}", "k-ok"});
    const auto answers = drive(sender, 2, 1000);
    ASSERT_EQ(answers.size(), 1u);
    EXPECT_EQ(answers[0].id, 3);
    EXPECT_EQ(answers[0].status, 200);
}

TEST(HttpSender, IdleSenderHasNothingToDo) {
    HttpSender sender;
    EXPECT_EQ(sender.in_flight(), 0u);
    pollfd fd{sender.poll_fd(), POLLIN, 0};
    EXPECT_EQ(::poll(&fd, 1, 0), 0);  // nothing to watch, nothing ready
    EXPECT_TRUE(sender.take_answers().empty());
    sender.poll(0);
    sender.on_timeout();
    EXPECT_TRUE(sender.take_answers().empty());
}

// The key travels in a header: plain http never goes through a proxy, whatever the
// environment or the options say (a proxy on a dead port would make the request fail).
TEST(HttpSender, PlainHttpIgnoresProxies) {
    TestServer server(canned);
    for (const char *var : {"http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"}) setenv(var, "http://127.0.0.1:9", 1);
    HttpSender sender;
    SenderOptions o = options_for(server.url());
    o.proxy = "http://127.0.0.1:9";
    sender.configure(o);
    sender.submit(HttpRequest{1, "{}", "k-proxy"});
    const auto answers = drive(sender, 1);
    for (const char *var : {"http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"}) unsetenv(var);
    ASSERT_EQ(answers.size(), 1u);
    EXPECT_EQ(answers[0].status, 200) << answers[0].error;
    EXPECT_EQ(server.requests().size(), 1u);
}

// The catalog's pages: a GET with the key and no Idempotency-Key, a larger answer allowed,
// and the same handle posting events again afterwards.
TEST(HttpSender, GetThenPostOnTheSameConnection) {
    TestServer server([](const ReceivedRequest &r) -> std::optional<std::string> {
        if (r.method == "GET") return http_response(200, std::string(100 * 1024, 'g'));
        return http_response(200, R"({"success":true})");
    });
    HttpSender sender;
    sender.configure(options_for(server.url()));
    HttpRequest get{-1, "", ""};
    get.get_url = server.url("/v1/events?per_page=100");
    get.max_answer_bytes = 1024 * 1024;
    sender.submit(get);
    auto answers = drive(sender, 1);
    ASSERT_EQ(answers.size(), 1u);
    EXPECT_EQ(answers[0].id, -1);
    EXPECT_EQ(answers[0].body.size(), 100u * 1024) << "not capped at 64 KiB";
    sender.submit(HttpRequest{2, R"({"email":"ada@example.com"})", "k-after-get"});
    answers = drive(sender, 1);
    ASSERT_EQ(answers.size(), 1u);
    EXPECT_EQ(answers[0].status, 200);
    const auto requests = server.requests();
    ASSERT_EQ(requests.size(), 2u);
    EXPECT_EQ(requests[0].method, "GET");
    EXPECT_EQ(requests[0].target, "/v1/events?per_page=100");
    EXPECT_EQ(requests[0].body, "");
    EXPECT_FALSE(requests[0].has_header("idempotency-key"));
    EXPECT_FALSE(requests[0].header("x-authorization").empty());
    EXPECT_EQ(requests[1].method, "POST");
    EXPECT_EQ(requests[1].target, "/v1/events/trigger");
    EXPECT_EQ(requests[1].header("idempotency-key"), "k-after-get");
    EXPECT_EQ(requests[1].body, R"({"email":"ada@example.com"})");
}
