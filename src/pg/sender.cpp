// The worker's C++ side. See sender.hpp.
#include <cstring>
#include <ctime>
#include <random>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "catalog.hpp"
#include "guard.hpp"
#include "http_sender.hpp"
#include "sender.hpp"
#include "settings.hpp"

extern "C" {
#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/timestamp.h"
}

namespace bunce_pg {
namespace {

struct Delivery {
    bunce::HttpSender sender;
    std::vector<bunce::HttpRequest> staged;  // claimed, sent once the claim has committed
    // Claimed or in flight, by outbox id: which claim of which event (an answer is recorded
    // only on the row as it was claimed).
    struct Claim {
        int attempts;
        std::string idempotency_key;
    };
    std::unordered_map<int64_t, Claim> claims;
    std::mt19937_64 random{std::random_device{}()};
    std::string api_base;  // bunce.api_url without a trailing slash
    struct Catalog {
        CatalogStep step = CATALOG_IDLE;
        std::vector<bunce::EventDefinition> events;
        std::string cursor;  // of the next page
        int pages = 0;
        size_t bytes = 0;  // of the events read
        std::string error;
    } catalog;
};
Delivery *delivery = nullptr;  // never destroyed: the process exits instead

CoreError cpp_error;

constexpr size_t kResponseChars = 2000;  // of Bunce's answer, kept with a dead letter
constexpr int64_t kCatalogRequest = -1;  // the id of a catalog page's request (outbox ids are > 0)

// Retry schedule: attempt n waits a random time in [0.5 s, min(10 min, 2^(n-1) s)].
constexpr int64 kBackoffBaseMs = 1000;
constexpr int64 kBackoffCapMs = 10 * 60 * 1000;

void check(bool ok) {
    if (!ok) raise(cpp_error, "bunce worker");
}

}  // namespace

void sender_start() {
    check(guarded(cpp_error, [] { delivery = new Delivery(); }));
}

void sender_configure() {
    check(guarded(cpp_error, [] {
        bunce::SenderOptions o;
        std::string url = api_url;
        while (!url.empty() && url.back() == '/') url.pop_back();
        delivery->api_base = url;
        o.url = url + "/events/trigger";
        o.api_key = api_key();
        o.user_agent = "bunce/" BUNCE_VERSION;
        o.ca_file = ca_file ? ca_file : "";
        o.proxy = https_proxy ? https_proxy : "";
        o.timeout_ms = request_timeout_ms;
        delivery->sender.configure(o);
    }));
}

// The request is built straight from the payload text: the worker keeps one copy of each
// payload in flight, no more.
void sender_stage(int64 id, int attempts, const char *event_id, const char *payload, const char *key) {
    check(guarded(cpp_error, [&] {
        std::string body;
        body.reserve(strlen(payload) + 64);
        body += "{\"event_id\":\"";
        body += event_id;
        body += "\",\"payload\":";
        body += payload;
        body += '}';
        delivery->staged.push_back({id, std::move(body), key});
        delivery->claims[id] = {attempts, key};
    }));
}

void sender_submit_staged() {
    check(guarded(cpp_error, [] {
        for (auto &r : delivery->staged) delivery->sender.submit(std::move(r));
        delivery->staged.clear();
    }));
}

namespace {

// One page of the catalog's answer: the next page to ask for, the end, or the failure (which
// names what went wrong, never the key).
void read_catalog_page(const bunce::HttpAnswer &a) {
    auto &c = delivery->catalog;
    auto fail = [&c](std::string error) {
        c.step = CATALOG_FAILED;
        c.error = std::move(error);
        c.events.clear();
        c.events.shrink_to_fit();
    };
    if (!a.error.empty()) return fail("GET /events failed: " + a.error);
    if (a.status < 200 || a.status >= 300) {
        const bunce::Verdict v = bunce::classify(a.status, a.body, a.error);
        return fail("GET /events answered HTTP " + std::to_string(a.status) + ": " + v.message);
    }
    if (a.body.size() >= bunce::kMaxEventsPageBytes)
        return fail("GET /events answered a page of more than " + std::to_string(bunce::kMaxEventsPageBytes) +
                    " bytes");
    bunce::EventsPage page;
    try {
        page = bunce::parse_events_page(a.body);
    } catch (const std::runtime_error &e) {
        return fail(e.what());  // names GET /events
    }
    for (auto &e : page.events) {
        c.bytes += e.name.size() + e.description.size() + e.parameters.size() + 64;
        c.events.push_back(std::move(e));
    }
    c.pages++;
    if (c.bytes > bunce::kMaxCatalogBytes) {
        fail("GET /events answered a catalog of more than " + std::to_string(bunce::kMaxCatalogBytes >> 20) + " MB");
    } else if (!page.has_next_page) {
        c.step = CATALOG_DONE;
    } else if (c.pages >= bunce::kMaxEventsPages) {
        fail("GET /events has more than " + std::to_string(bunce::kMaxEventsPages) + " pages");
    } else if (page.events.empty() || page.next_page_cursor == c.cursor) {
        fail("GET /events answered a page that leads nowhere (no events, or the same cursor again)");
    } else {
        c.cursor = std::move(page.next_page_cursor);
        c.step = CATALOG_NEXT_PAGE;
    }
}

}  // namespace

void sender_catalog_start() {
    check(guarded(cpp_error, [] { delivery->catalog = Delivery::Catalog(); }));
}

void sender_stage_catalog_page() {
    check(guarded(cpp_error, [] {
        bunce::HttpRequest r{kCatalogRequest, {}, {}};
        r.get_url = bunce::events_page_url(delivery->api_base, delivery->catalog.cursor);
        r.max_answer_bytes = bunce::kMaxEventsPageBytes;
        delivery->staged.push_back(std::move(r));
        delivery->catalog.step = CATALOG_PAGE_OUT;
    }));
}

CatalogStep sender_catalog_step() {
    const CatalogStep step = delivery->catalog.step;
    if (step == CATALOG_DONE || step == CATALOG_FAILED || step == CATALOG_NEXT_PAGE)
        delivery->catalog.step = CATALOG_IDLE;
    return step;
}

char *sender_catalog_json() {
    char *out = nullptr;
    const bool utf8 = GetDatabaseEncoding() == PG_UTF8;
    check(guarded(cpp_error, [&] {
        auto &events = delivery->catalog.events;
        std::string json = bunce::events_json(events);
        events.clear();
        // Bunce writes UTF-8; a database in another encoding keeps the ASCII only (as answers).
        if (!utf8)
            for (char &ch : json)
                if (static_cast<unsigned char>(ch) >= 0x80) ch = '?';
        out = pstrdup_nothrow(json.data(), json.size());
    }));
    return out;
}

char *sender_catalog_error() {
    char *out = nullptr;
    const std::string &e = delivery->catalog.error;
    check(guarded(cpp_error, [&] { out = pstrdup_nothrow(e.data(), e.size()); }));
    return out;
}

int sender_collect(Answer **out, bunce::SenderPause &pause) {
    int n = 0;
    const bool utf8 = GetDatabaseEncoding() == PG_UTF8;
    const int64_t now_us = GetCurrentTimestamp();  // the clock of bunce.status's paused_until
    const bunce::RetryPolicy policy{max_attempts, kBackoffBaseMs, kBackoffCapMs};
    check(guarded(cpp_error, [&] {
        std::vector<bunce::HttpAnswer> answers = delivery->sender.take_answers();
        if (answers.empty()) return;
        auto *r = static_cast<Answer *>(palloc_extended(sizeof(Answer) * answers.size(), MCXT_ALLOC_NO_OOM));
        if (!r) throw std::bad_alloc();
        const int64_t now_epoch_s = time(nullptr);
        // Bunce's answers are UTF-8; a database in another encoding keeps their ASCII only,
        // since a conversion that fails would stop the worker.
        auto keep = [utf8](std::string t) {
            if (!utf8)
                for (char &c : t)
                    if (static_cast<unsigned char>(c) >= 0x80) c = '?';
            return pstrdup_nothrow(t.data(), t.size());
        };
        for (const auto &a : answers) {
            if (a.id == kCatalogRequest) {
                read_catalog_page(a);
                continue;
            }
            bunce::Verdict v = bunce::classify(a.status, a.body, a.error);
            Answer &x = r[n++];
            x.id = a.id;
            x.status = static_cast<int>(a.status);
            x.outcome = v.outcome;
            x.answer_class = bunce::answer_class(a.status, a.timed_out);
            auto claim = delivery->claims.find(a.id);
            if (claim == delivery->claims.end()) throw std::logic_error("an answer to a request that was not sent");
            x.attempts = claim->second.attempts;
            x.idempotency_key =
                pstrdup_nothrow(claim->second.idempotency_key.data(), claim->second.idempotency_key.size());
            delivery->claims.erase(claim);
            x.decision =
                bunce::decide_answer(v, a.status, x.attempts, bunce::parse_retry_after(a.retry_after, now_epoch_s),
                                     policy, now_us, delivery->random(), pause);
            if (a.status == 404)  // what Bunce's "not found" means for a trigger
                v.message =
                    "the event does not exist in this Bunce account (live and test keys see different "
                    "events; see bunce.events): " +
                    v.message;
            x.message = keep(std::move(v.message));
            x.response = keep(bunce::printable_text(a.body, kResponseChars));
        }
        *out = r;
    }));
    return n;
}

int sender_poll_fd() {
    int fd = -1;
    check(guarded(cpp_error, [&] { fd = delivery->sender.poll_fd(); }));
    return fd;
}

long sender_timeout_ms() {
    long ms = -1;
    check(guarded(cpp_error, [&] { ms = delivery->sender.timeout_ms(); }));
    return ms;
}

void sender_on_ready() {
    check(guarded(cpp_error, [] { delivery->sender.on_ready(); }));
}

void sender_on_timeout() {
    check(guarded(cpp_error, [] { delivery->sender.on_timeout(); }));
}

void sender_abandon_all() {
    check(guarded(cpp_error, [] {
        delivery->sender.abandon_all();
        delivery->staged.clear();
        delivery->claims.clear();
        if (delivery->catalog.step == CATALOG_PAGE_OUT) {
            delivery->catalog.step = CATALOG_FAILED;
            delivery->catalog.error = "the sync was stopped (delivery stopped)";
        }
    }));
}

int sender_in_flight() { return static_cast<int>(delivery->sender.in_flight()); }
int sender_staged() { return static_cast<int>(delivery->staged.size()); }

namespace {

// A bigint[] of the outbox ids of `items`, each given by `id_of`.
template <typename Items, typename IdOf>
Datum id_array(const Items &items, IdOf id_of) {
    Datum *ids = nullptr;
    int n = 0;
    check(guarded(cpp_error, [&] {
        ids = static_cast<Datum *>(palloc_extended(sizeof(Datum) * (items.size() + 1), MCXT_ALLOC_NO_OOM));
        if (!ids) throw std::bad_alloc();
        for (const auto &x : items) ids[n++] = Int64GetDatum(id_of(x));
    }));
    return PointerGetDatum(construct_array(ids, n, INT8OID, 8, true, TYPALIGN_DOUBLE));
}

}  // namespace

Datum sender_staged_ids() {
    return id_array(delivery->staged, [](const bunce::HttpRequest &r) { return r.id; });
}

Datum sender_held_ids() {
    return id_array(delivery->claims, [](const auto &c) { return c.first; });
}

}  // namespace bunce_pg
