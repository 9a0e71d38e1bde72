// The drain's ceiling on this machine: bunce's HTTP sender alone (src/core/http_sender.cpp,
// the worker's own code and libcurl settings), no database, posting event-sized bodies to a
// sink with `in_flight` requests open, as the worker does. Whatever this reaches, a worker
// that also claims and records each event in PostgreSQL on the same core reaches less.
//
//   bunce_sender_ceiling URL REQUESTS IN_FLIGHT
//
// Prints one line: requests/s, CPU microseconds per request (user + system, of this process),
// and the count of answers other than 200 (the exit status is 1 if there were any).
#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "http_sender.hpp"

namespace {

double cpu_seconds() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s URL REQUESTS IN_FLIGHT\n", argv[0]);
        return 2;
    }
    const long total = std::atol(argv[2]);
    const long in_flight = std::atol(argv[3]);
    if (total <= 0 || in_flight <= 0) {
        std::fprintf(stderr, "REQUESTS and IN_FLIGHT must be positive\n");
        return 2;
    }
    bunce::HttpSender sender;
    bunce::SenderOptions options;
    options.url = argv[1];
    options.api_key = "sk_test_ceiling";
    options.user_agent = "bunce-sender-ceiling";
    sender.configure(options);
    long submitted = 0, answered = 0, not_ok = 0;
    auto submit = [&] {
        // The body the worker sends for an event of bench/run's backlog (enqueue_backlog), the
        // payload as jsonb writes it out.
        char body[256];
        std::snprintf(body, sizeof body,
                      "{\"event_id\":\"9bb6215c-e2b1-4e51-abff-3a96ca185088\",\"payload\":{\"email\": "
                      "\"customer%ld@example.com\", \"amount\": %ld, \"date_purchased\": "
                      "\"2026-12-02T06:00:00Z\"}}",
                      submitted + 1, submitted + 1);
        char key[40];
        std::snprintf(key, sizeof key, "00000000-0000-4000-8000-%012ld", submitted);
        sender.submit(bunce::HttpRequest{submitted, body, key});
        submitted++;
    };
    const double cpu0 = cpu_seconds();
    const int64_t t0 = bunce::monotonic_us();
    while (answered < total) {
        while (submitted < total && static_cast<long>(sender.in_flight()) < in_flight) submit();
        sender.poll(1000);
        for (const bunce::HttpAnswer &a : sender.take_answers()) {
            answered++;
            if (a.status != 200 && not_ok++ == 0)
                std::fprintf(stderr, "first answer not 200: status %ld, %s\n", a.status, a.error.c_str());
        }
    }
    const double seconds = static_cast<double>(bunce::monotonic_us() - t0) / 1e6;
    const double cpu = cpu_seconds() - cpu0;
    std::printf("%.0f requests/s, %.1f us CPU per request, %ld not 200\n", total / seconds, cpu * 1e6 / total, not_ok);
    return not_ok == 0 ? 0 : 1;
}
