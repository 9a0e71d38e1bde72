// The delivery worker: claims due events in short transactions, sends them with libcurl's
// multi interface after the claim committed (never HTTP inside a transaction holding outbox
// rows), and records each answer: delete on 2xx, dead letter on a permanent refusal, back
// off and retry on anything transient.
#include <malloc.h>

#include <cstring>
#include <random>
#include <string>
#include <unordered_map>

#include "delivery.hpp"
#include "guard.hpp"
#include "bunce_pg.hpp"
#include "http_sender.hpp"
#include "rate_limiter.hpp"

extern "C" {
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PGDLLEXPORT void bunce_worker_main(Datum);
}

namespace bunce_pg {

namespace {

/* ---------------------------------------------------------------------------------------
 * The C++ side: sender, limiter, what is in flight. Reached only through the guarded
 * functions below, which hand plain palloc'd data to the PostgreSQL side.
 */
struct Delivery {
    bunce::HttpSender sender;
    bunce::RateLimiter limiter;
    std::vector<bunce::HttpRequest> staged;     // claimed, sent once the claim has committed
    std::unordered_map<int64_t, int> attempts;  // claimed or in flight: outbox id -> attempt number
    std::mt19937_64 random{std::random_device{}()};
};
Delivery *delivery = nullptr;  // never destroyed: the process exits instead

struct Answer {
    int64 id;
    int status;  // HTTP status, 0 when there was no answer
    bunce::Outcome outcome;
    int attempts;
    int64 retry_after_s;  // from Retry-After, or -1
    int64 backoff_ms;
    char *message;
    char *response;  // Bunce's answer body, bounded and cleaned ("" when none)
};

CoreError cpp_error;

// Bunce's answers are UTF-8; a database in another encoding keeps their ASCII only, since a
// conversion that fails would stop the worker.
constexpr size_t kResponseChars = 2000;
MemoryContext loop_cxt;  // reset at the start of every round of the loop

// Retry schedule: attempt n waits a random time in [0.5 s, min(10 min, 2^(n-1) s)].
constexpr int64 kBackoffBaseMs = 1000;
constexpr int64 kBackoffCapMs = 10 * 60 * 1000;

void check(bool ok) {
    if (!ok) raise(cpp_error, "bunce worker");
}

void delivery_start() {
    check(guarded(cpp_error, [] { delivery = new Delivery(); }));
}

void delivery_configure() {
    check(guarded(cpp_error, [] {
        bunce::SenderOptions o;
        std::string url = api_url;
        while (!url.empty() && url.back() == '/') url.pop_back();
        o.url = url + "/events/trigger";
        o.api_key = api_key();
        o.user_agent = "bunce/" BUNCE_VERSION;
        o.ca_file = ca_file ? ca_file : "";
        o.proxy = https_proxy ? https_proxy : "";
        o.timeout_ms = request_timeout_ms;
        delivery->sender.configure(o);
        delivery->limiter.set_limit(rate_limit);
    }));
}

// A claimed event's request, built straight from its payload text: the worker keeps one copy
// of each payload in flight, no more.
void delivery_stage(int64 id, int attempts, const char *event_id, const char *payload, const char *key) {
    check(guarded(cpp_error, [&] {
        std::string body;
        body.reserve(strlen(payload) + 64);
        body += "{\"event_id\":\"";
        body += event_id;
        body += "\",\"payload\":";
        body += payload;
        body += '}';
        delivery->staged.push_back({id, std::move(body), key});
        delivery->attempts[id] = attempts;
    }));
}

// Sends what was staged.
void delivery_submit_staged() {
    check(guarded(cpp_error, [] {
        const int64_t now = bunce::monotonic_us();
        for (auto &r : delivery->staged) {
            delivery->sender.submit(std::move(r));
            delivery->limiter.record(now);
        }
        delivery->staged.clear();
    }));
}

// Answers that arrived, classified. Returns how many; *out is palloc'd.
int delivery_collect(Answer **out) {
    int n = 0;
    const bool utf8 = GetDatabaseEncoding() == PG_UTF8;
    check(guarded(cpp_error, [&] {
        std::vector<bunce::HttpAnswer> answers = delivery->sender.take_answers();
        if (answers.empty()) return;
        auto *r = static_cast<Answer *>(palloc_extended(sizeof(Answer) * answers.size(), MCXT_ALLOC_NO_OOM));
        if (!r) throw std::bad_alloc();
        const int64_t now = time(nullptr);
        auto keep = [utf8](std::string t) {
            if (!utf8)
                for (char &c : t)
                    if (static_cast<unsigned char>(c) >= 0x80) c = '?';
            return pstrdup_nothrow(t.data(), t.size());
        };
        for (const auto &a : answers) {
            bunce::Verdict v = bunce::classify(a.status, a.body, a.error);
            Answer &x = r[n++];
            x.id = a.id;
            x.status = static_cast<int>(a.status);
            x.outcome = v.outcome;
            x.attempts = delivery->attempts[a.id];
            delivery->attempts.erase(a.id);
            auto ra = bunce::parse_retry_after(a.retry_after, now);
            x.retry_after_s = ra ? *ra : -1;
            x.backoff_ms = bunce::backoff_ms(x.attempts, kBackoffBaseMs, kBackoffCapMs, delivery->random());
            if (x.retry_after_s > 0) x.backoff_ms = std::max<int64>(x.backoff_ms, x.retry_after_s * 1000);
            x.message = keep(std::move(v.message));
            x.response = keep(bunce::printable_text(a.body, kResponseChars));
        }
        *out = r;
    }));
    return n;
}

int delivery_poll_fd() {
    int fd = -1;
    check(guarded(cpp_error, [&] { fd = delivery->sender.poll_fd(); }));
    return fd;
}

long delivery_timeout_ms() {
    long ms = -1;
    check(guarded(cpp_error, [&] { ms = delivery->sender.timeout_ms(); }));
    return ms;
}

void delivery_on_ready() {
    check(guarded(cpp_error, [] { delivery->sender.on_ready(); }));
}

void delivery_on_timeout() {
    check(guarded(cpp_error, [] { delivery->sender.on_timeout(); }));
}

int in_flight() { return static_cast<int>(delivery->sender.in_flight()); }
int64 limiter_wait_us() { return delivery->limiter.wait_us(bunce::monotonic_us()); }

/* ---------------------------------------------------------------------------------------
 * Worker state, published in shared memory for bunce.status; one log line per change.
 */
volatile sig_atomic_t stop_requested = false;
volatile sig_atomic_t in_transaction = false;  // between begin() and end()

// SIGTERM between rounds lets requests in flight finish briefly (see the loop). Inside a
// transaction, a lock wait or a long statement, it is PostgreSQL's own die(): the worker ends
// at the next interrupt check, as any backend would.
void handle_sigterm(SIGNAL_ARGS) {
    stop_requested = true;
    if (in_transaction) {
        die(postgres_signal_arg);
        return;
    }
    int save_errno = errno;
    SetLatch(MyLatch);
    errno = save_errno;
}

void set_state(WorkerState state, const char *reason, TimestampTz until) {
    SpinLockAcquire(&shared->mutex);
    const bool changed = shared->state != state || strcmp(shared->paused_reason, reason ? reason : "") != 0;
    shared->state = state;
    strlcpy(shared->paused_reason, reason ? reason : "", sizeof shared->paused_reason);
    shared->paused_until = until;
    SpinLockRelease(&shared->mutex);
    if (!changed) return;
    if (state == WORKER_RUNNING)
        ereport(LOG, (errmsg("bunce worker: delivering events")));
    else if (state == WORKER_PAUSED && until)
        ereport(LOG, (errmsg("bunce worker: delivery paused until %s: %s", timestamptz_to_str(until), reason)));
    else if (state == WORKER_PAUSED || state == WORKER_DISABLED)
        ereport(LOG, (errmsg("bunce worker: delivery paused: %s", reason)));
}

// Backoff of the whole sender after the key was refused: 1 min, doubling to 30 min.
int64 auth_backoff_s = 0;
TimestampTz paused_until = 0;  // 0: not paused by an answer
char pause_reason[128];
TimestampTz next_due = 0;      // earliest retry due, 0 when unknown/none
bool look_for_work = true;
TimestampTz last_prune = 0;
TimestampTz last_housekeeping = 0;  // see housekeeping()

// Requests sent per second over the last minute (for "rate actually used").
int64 second_stamp[60];
int second_count[60];

void count_requests(int n) {
    const int64 sec = GetCurrentTimestamp() / USECS_PER_SEC;
    const int slot = static_cast<int>(sec % 60);
    if (second_stamp[slot] != sec) {
        second_stamp[slot] = sec;
        second_count[slot] = 0;
    }
    second_count[slot] += n;
}

int requests_last_minute() {
    const int64 sec = GetCurrentTimestamp() / USECS_PER_SEC;
    int total = 0;
    for (int i = 0; i < 60; i++)
        if (second_stamp[i] > sec - 60) total += second_count[i];
    return total;
}

void publish_results(int delivered, int dead, const Answer *last_error, int removed) {
    const TimestampTz now = GetCurrentTimestamp();
    const int64 minute = now / USECS_PER_MINUTE;
    const int b = static_cast<int>(minute % 60);
    SpinLockAcquire(&shared->mutex);
    if (shared->bucket_minute[b] != minute) {
        shared->bucket_minute[b] = minute;
        shared->bucket_delivered[b] = 0;
        shared->bucket_failed[b] = 0;
    }
    shared->bucket_delivered[b] += delivered;
    shared->bucket_failed[b] += dead;
    shared->delivered += delivered;
    shared->failed += dead;
    shared->queued_base -= removed;
    if (delivered) shared->last_success_at = now;
    if (last_error) {
        shared->last_error_status = last_error->status;
        strlcpy(shared->last_error, last_error->message, sizeof shared->last_error);
        shared->last_error_at = now;
    }
    shared->in_flight = in_flight();
    shared->requests_last_minute = requests_last_minute();
    SpinLockRelease(&shared->mutex);
}

/* ---------------------------------------------------------------------------------------
 * SQL. Each statement is prepared once and kept.
 */
SPIPlanPtr plan_claim, plan_delivered, plan_delivered_logged, plan_dead, plan_retry, plan_next_due;

SPIPlanPtr prepare(const char *sql, int nargs, Oid *types) {
    SPIPlanPtr p = SPI_prepare(sql, nargs, types);
    if (!p) elog(ERROR, "bunce worker: could not prepare \"%s\": %s", sql, SPI_result_code_string(SPI_result));
    SPI_keepplan(p);
    return p;
}

void prepare_plans() {
    if (plan_claim) return;
    Oid claim_types[] = {INT4OID};
    plan_claim = prepare(
        "UPDATE bunce.outbox o SET sending_since = pg_catalog.statement_timestamp(), attempts = o.attempts + 1, "
        "       first_attempt_at = coalesce(o.first_attempt_at, pg_catalog.statement_timestamp()) "
        "FROM (SELECT id FROM bunce.outbox "
        "      WHERE next_attempt_at <= pg_catalog.statement_timestamp() AND sending_since IS NULL "
        "      ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) c "
        "WHERE o.id = c.id "
        "RETURNING o.id, o.attempts, o.event_id::text, o.payload::pg_catalog.jsonb, o.idempotency_key::text",
        1, claim_types);
    Oid del_types[] = {INT8ARRAYOID, INT4ARRAYOID};
    plan_delivered = prepare("DELETE FROM bunce.outbox WHERE id = ANY ($1)", 1, del_types);
    plan_delivered_logged = prepare(
        "WITH a AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), pg_catalog.unnest($2::integer[])) "
        "           AS a(id, status)), "
        "d AS (DELETE FROM bunce.outbox o USING a WHERE o.id = a.id "
        "      RETURNING o.id, o.event_id, o.idempotency_key, a.status, o.attempts, o.enqueued_at) "
        "INSERT INTO bunce.deliveries (id, event_id, idempotency_key, http_status, attempts, enqueued_at) "
        "SELECT * FROM d "
        "ON CONFLICT (id) DO UPDATE SET delivered_at = pg_catalog.now(), http_status = excluded.http_status, "
        "                               attempts = excluded.attempts",
        2, del_types);
    Oid dead_types[] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
    plan_dead = prepare(
        "WITH a AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), pg_catalog.unnest($2::integer[]), "
        "                                    pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::text[]), "
        "                                    pg_catalog.unnest($5::text[])) "
        "           AS a(id, status, message, reason, response)), "
        "d AS (DELETE FROM bunce.outbox o USING a WHERE o.id = a.id "
        "      RETURNING o.*, a.status AS a_status, a.message AS a_message, a.reason AS a_reason, "
        "                a.response AS a_response) "
        "INSERT INTO bunce.dead_letters (id, event_id, payload, idempotency_key, reason, http_status, "
        "    message, response, attempts, enqueued_at, first_attempt_at, last_attempt_at) "
        "SELECT id, event_id, payload, idempotency_key, a_reason, nullif(a_status, 0), a_message, "
        "       nullif(a_response, ''), attempts, enqueued_at, first_attempt_at, sending_since FROM d",
        5, dead_types);
    Oid retry_types[] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, INT8ARRAYOID, INT4ARRAYOID};
    plan_retry = prepare(
        "UPDATE bunce.outbox o SET sending_since = NULL, "
        "       next_attempt_at = pg_catalog.statement_timestamp() + a.delay_ms * interval '1 millisecond', "
        "       last_status = nullif(a.status, 0), last_error = a.message, "
        "       attempts = o.attempts - a.uncounted "
        "FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), pg_catalog.unnest($2::integer[]), "
        "                pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::bigint[]), "
        "                pg_catalog.unnest($5::integer[])) "
        "     AS a(id, status, message, delay_ms, uncounted) "
        "WHERE o.id = a.id",
        5, retry_types);
    plan_next_due = prepare(
        "SELECT next_attempt_at FROM bunce.outbox WHERE sending_since IS NULL "
        "ORDER BY next_attempt_at, id LIMIT 1",
        0, nullptr);
}

struct Batch {  // arrays for one statement
    int n;
    Datum *ids, *statuses, *messages, *extra, *extra2;
};

void batch_init(Batch *b, int cap) {
    b->n = 0;
    b->ids = static_cast<Datum *>(palloc(sizeof(Datum) * cap));
    b->statuses = static_cast<Datum *>(palloc(sizeof(Datum) * cap));
    b->messages = static_cast<Datum *>(palloc(sizeof(Datum) * cap));
    b->extra = static_cast<Datum *>(palloc(sizeof(Datum) * cap));
    b->extra2 = static_cast<Datum *>(palloc(sizeof(Datum) * cap));
}

Datum int8s(Datum *d, int n) { return PointerGetDatum(construct_array(d, n, INT8OID, 8, true, TYPALIGN_DOUBLE)); }
Datum int4s(Datum *d, int n) { return PointerGetDatum(construct_array(d, n, INT4OID, 4, true, TYPALIGN_INT)); }
Datum texts(Datum *d, int n) { return PointerGetDatum(construct_array(d, n, TEXTOID, -1, false, TYPALIGN_INT)); }

void run(SPIPlanPtr plan, Datum *args, int expected) {
    int rc = SPI_execute_plan(plan, args, nullptr, false, 0);
    if (rc != expected) elog(ERROR, "bunce worker: statement failed: %s", SPI_result_code_string(rc));
}

// Records answers; returns how many left the outbox. Counts into the out parameters.
int record(Answer *r, int n, int *delivered, int *dead, const Answer **last_error) {
    Batch ok, gone, again;
    batch_init(&ok, n);
    batch_init(&gone, n);
    batch_init(&again, n);
    const TimestampTz now = GetCurrentTimestamp();
    for (int i = 0; i < n; i++) {
        Answer &x = r[i];
        Batch *b;
        const char *reason = nullptr;
        int uncounted = 0;
        if (x.outcome != bunce::Outcome::delivered) *last_error = &x;
        switch (x.outcome) {
            case bunce::Outcome::delivered:
                b = &ok;
                break;
            case bunce::Outcome::rejected:
                b = &gone;
                reason = "rejected";
                break;
            case bunce::Outcome::unauthorized:
                // The key, not the event, is wrong: pause everything, do not count the attempt.
                // Requests already in flight answer the same: one pause, not one each.
                if (paused_until <= now) {
                    auth_backoff_s = auth_backoff_s ? Min(auth_backoff_s * 2, 1800) : 60;
                    paused_until = now + auth_backoff_s * USECS_PER_SEC;
                }
                snprintf(pause_reason, sizeof pause_reason,
                         "Bunce rejected the API key (HTTP %d); set bunce.api_key and reload", x.status);
                b = &again;
                uncounted = 1;
                x.backoff_ms = 0;
                break;
            case bunce::Outcome::rate_limited: {
                const int64 wait_s = x.retry_after_s > 0 ? x.retry_after_s : 60;
                paused_until = Max(paused_until, now + wait_s * USECS_PER_SEC);
                snprintf(pause_reason, sizeof pause_reason, "Bunce rate limit (HTTP 429), Retry-After %lld s",
                         static_cast<long long>(wait_s));
                b = &again;
                uncounted = 1;
                x.backoff_ms = 0;
                break;
            }
            case bunce::Outcome::retry:
            default:
                if (x.attempts >= max_attempts) {
                    b = &gone;
                    reason = "attempts_exhausted";
                } else {
                    b = &again;
                }
                break;
        }
        if (x.outcome == bunce::Outcome::delivered) auth_backoff_s = 0;
        b->ids[b->n] = Int64GetDatum(x.id);
        b->statuses[b->n] = Int32GetDatum(x.status);
        b->messages[b->n] = CStringGetTextDatum(x.message);
        if (b == &gone) {
            b->extra[b->n] = CStringGetTextDatum(reason);
            b->extra2[b->n] = CStringGetTextDatum(x.response);
        }
        if (b == &again) {
            b->extra[b->n] = Int64GetDatum(x.backoff_ms);
            b->extra2[b->n] = Int32GetDatum(uncounted);
        }
        b->n++;
    }
    if (ok.n) {
        if (delivery_log_retention_s > 0) {
            Datum args[] = {int8s(ok.ids, ok.n), int4s(ok.statuses, ok.n)};
            run(plan_delivered_logged, args, SPI_OK_INSERT);
        } else {
            Datum args[] = {int8s(ok.ids, ok.n)};
            run(plan_delivered, args, SPI_OK_DELETE);
        }
    }
    if (gone.n) {
        Datum args[] = {int8s(gone.ids, gone.n), int4s(gone.statuses, gone.n),
                        texts(gone.messages, gone.n), texts(gone.extra, gone.n), texts(gone.extra2, gone.n)};
        run(plan_dead, args, SPI_OK_INSERT);
    }
    if (again.n) {
        Datum args[] = {int8s(again.ids, again.n), int4s(again.statuses, again.n),
                        texts(again.messages, again.n), int8s(again.extra, again.n),
                        int4s(again.extra2, again.n)};
        run(plan_retry, args, SPI_OK_UPDATE);
        look_for_work = true;  // unpaused retries may be due at once
        last_housekeeping = 0;  // bunce.status.waiting_retry: count them this round
    }
    *delivered = ok.n;
    *dead = gone.n;
    return ok.n + gone.n;
}

// Claims up to `limit` due events and stages their requests; returns how many. A payload over
// bunce.max_payload_size (enqueued before the limit was lowered, or written into the outbox
// by hand) is not sent: it becomes a dead letter at once, so the worker never holds more
// than bunce.max_in_flight payloads of that size. *oversize counts those.
int claim(int limit, int *oversize) {
    Datum args[] = {Int32GetDatum(limit)};
    run(plan_claim, args, SPI_OK_UPDATE_RETURNING);
    const int n = static_cast<int>(SPI_processed);
    SPITupleTable *claimed = SPI_tuptable;
    Batch big;
    batch_init(&big, n);
    // The payload arrives as jsonb, still compressed or in TOAST, and becomes text one row at
    // a time: the claim never holds more than one payload besides those staged.
    MemoryContext row_cxt = AllocSetContextCreate(CurrentMemoryContext, "bunce claim row", ALLOCSET_DEFAULT_SIZES);
    for (int i = 0; i < n; i++) {
        HeapTuple t = claimed->vals[i];
        TupleDesc d = claimed->tupdesc;
        bool isnull;
        const int64 id = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
        MemoryContext old = MemoryContextSwitchTo(row_cxt);
        Jsonb *jb = DatumGetJsonbP(SPI_getbinval(t, d, 4, &isnull));
        // Enqueued payloads were measured as sent; one written by hand could write out to far
        // more than its stored size (numbers): that is not even made text.
        const bool huge = VARSIZE(jb) > 8 * static_cast<size_t>(max_payload_size);
        char *payload = huge ? nullptr : JsonbToCString(nullptr, &jb->root, VARSIZE(jb));
        // JSON on the wire is UTF-8, whatever the database's encoding.
        if (payload && GetDatabaseEncoding() != PG_UTF8)
            payload = pg_server_to_any(payload, static_cast<int>(strlen(payload)), PG_UTF8);
        MemoryContextSwitchTo(old);
        const size_t size = payload ? strlen(payload) : VARSIZE(jb);
        if (size > static_cast<size_t>(max_payload_size)) {
            big.ids[big.n] = Int64GetDatum(id);
            big.statuses[big.n] = Int32GetDatum(0);
            big.messages[big.n] = CStringGetTextDatum(
                psprintf("not sent: the payload is %zu bytes, more than bunce.max_payload_size (%d bytes)",
                         size, max_payload_size));
            big.extra[big.n] = CStringGetTextDatum("invalid");
            big.extra2[big.n] = CStringGetTextDatum("");
            big.n++;
        } else {
            delivery_stage(id, DatumGetInt32(SPI_getbinval(t, d, 2, &isnull)), SPI_getvalue(t, d, 3),
                           payload, SPI_getvalue(t, d, 5));
        }
        MemoryContextReset(row_cxt);
    }
    MemoryContextDelete(row_cxt);
    if (big.n) {
        Datum dead_args[] = {int8s(big.ids, big.n), int4s(big.statuses, big.n),
                             texts(big.messages, big.n), texts(big.extra, big.n), texts(big.extra2, big.n)};
        run(plan_dead, dead_args, SPI_OK_INSERT);
    }
    *oversize = big.n;
    return n - big.n;
}

TimestampTz query_next_due() {
    run(plan_next_due, nullptr, SPI_OK_SELECT);
    if (SPI_processed == 0) return 0;
    bool isnull;
    return DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

int64 query_int(const char *sql) {
    if (SPI_execute(sql, false, 0) < 0) elog(ERROR, "bunce worker: could not run \"%s\"", sql);
    bool isnull;
    Datum d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
    return isnull ? 0 : DatumGetInt64(d);
}

void begin(const char *activity) {
    in_transaction = true;
    SetCurrentStatementStartTimestamp();
    StartTransactionCommand();
    SPI_connect();
    PushActiveSnapshot(GetTransactionSnapshot());
    pgstat_report_activity(STATE_RUNNING, activity);
}

void end() {
    SPI_finish();
    PopActiveSnapshot();
    CommitTransactionCommand();
    in_transaction = false;
    pgstat_report_activity(STATE_IDLE, nullptr);
    MemoryContextSwitchTo(loop_cxt);
}

// The outbox ids of the requests in flight, as a bigint[].
Datum in_flight_ids() {
    Datum *ids = nullptr;
    int n = 0;
    check(guarded(cpp_error, [&] {
        ids = static_cast<Datum *>(palloc_extended(sizeof(Datum) * (delivery->attempts.size() + 1), MCXT_ALLOC_NO_OOM));
        if (!ids) throw std::bad_alloc();
        for (const auto &a : delivery->attempts) ids[n++] = Int64GetDatum(a.first);
    }));
    return int8s(ids, n);
}

// A claim lasts at most a request's time limit; one this much older is held by no request.
constexpr int kClaimMarginMs = 30000;

// Makes claims due again that no request of this worker holds: at start-up all of them (what a
// crash or a stop left behind), later those older than a request can last (restored with the
// outbox, or left by an earlier worker). Such an event was possibly sent: it is marked,
// counted and sent again, with the same Idempotency-Key.
void release_claims(bool all) {
    char sql[512];
    char older[256] = "";
    if (!all)  // the requests this worker has in flight may outlast a lowered request_timeout
        snprintf(older, sizeof older,
                 "AND sending_since < pg_catalog.statement_timestamp() - interval '%d milliseconds' "
                 "AND id <> ALL ($1) ",
                 request_timeout_ms + kClaimMarginMs);
    snprintf(sql, sizeof sql,
             "WITH r AS (UPDATE bunce.outbox SET sending_since = NULL, possible_duplicate = true, "
             "next_attempt_at = least(next_attempt_at, pg_catalog.statement_timestamp()) "
             "WHERE sending_since IS NOT NULL %sRETURNING 1) SELECT pg_catalog.count(*) FROM r",
             older);
    Datum held = all ? static_cast<Datum>(0) : in_flight_ids();
    Oid types[] = {INT8ARRAYOID};
    if (SPI_execute_with_args(sql, all ? 0 : 1, types, &held, nullptr, false, 0) != SPI_OK_SELECT)
        elog(ERROR, "bunce worker: could not release claims");
    bool isnull;
    const int64 resent = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
    if (resent == 0) return;
    SpinLockAcquire(&shared->mutex);
    shared->possibly_duplicated += resent;
    SpinLockRelease(&shared->mutex);
    ereport(LOG, (all ? errmsg("bunce worker: %lld events were in flight when delivery stopped; they will be sent again",
                               static_cast<long long>(resent))
                      : errmsg("bunce worker: %lld events were claimed longer ago than a request can last; they will be sent again",
                               static_cast<long long>(resent)),
                  errdetail("Their rows in bunce.outbox are marked possible_duplicate; each request carries the same Idempotency-Key.")));
}

// Counts the queue. Between counts bunce.status.queued follows commits (counted at commit in
// this database) and answers; a count corrects what those miss: COMMIT PREPARED, rows
// restored or written by hand, DELETEs by hand.
void recount_queue() {
    const uint64 committed = pg_atomic_read_u64(&shared->committed);
    const int64 queued = query_int("SELECT pg_catalog.count(*) FROM bunce.outbox");
    SpinLockAcquire(&shared->mutex);
    shared->queued_base = queued;
    shared->committed_at_base = committed;
    SpinLockRelease(&shared->mutex);
}

// True once the extension exists here. On first sight (after a start, or after the extension
// was dropped and created again): every claim is released and the queue is counted.
bool extension_ready = false;

bool check_extension() {
    begin("bunce: checking for the extension");
    const bool present = OidIsValid(get_extension_oid("bunce", true));
    if (present && !extension_ready) {
        prepare_plans();
        release_claims(true);
        recount_queue();
    }
    end();
    extension_ready = present;
    return present;
}

void prune_deliveries(TimestampTz now) {
    if (now - last_prune < 60 * USECS_PER_SEC) return;
    last_prune = now;
    begin("bunce: pruning bunce.deliveries");
    int64 removed;
    if (delivery_log_retention_s == 0) {
        removed = query_int("WITH d AS (DELETE FROM bunce.deliveries WHERE id IN "
                            "(SELECT id FROM bunce.deliveries LIMIT 5000) RETURNING 1) SELECT pg_catalog.count(*) FROM d");
    } else {
        char sql[512];
        snprintf(sql, sizeof sql,
                 "WITH d AS (DELETE FROM bunce.deliveries WHERE id IN (SELECT id FROM bunce.deliveries "
                 "WHERE delivered_at < pg_catalog.now() - interval '%d seconds' ORDER BY delivered_at LIMIT 5000) "
                 "RETURNING 1) SELECT pg_catalog.count(*) FROM d",
                 delivery_log_retention_s);
        removed = query_int(sql);
    }
    end();
    if (removed == 5000) last_prune = 0;  // more to do: next round, in small batches
}

// Every second: look for due events even if no commit woke the worker (COMMIT PREPARED,
// pg_restore, rows written into the outbox by hand); count the retries waiting, and every
// 5 s the whole queue, releasing claims that no request holds; notice a dropped extension.
TimestampTz last_recount = 0;
constexpr int64 kHousekeepingUs = USECS_PER_SEC;
constexpr int64 kRecountUs = 5 * USECS_PER_SEC;

void housekeeping(TimestampTz now) {
    if (now - last_housekeeping < kHousekeepingUs) return;
    last_housekeeping = now;
    look_for_work = true;
    begin("bunce: housekeeping");
    if (!OidIsValid(get_extension_oid("bunce", true))) {
        end();
        extension_ready = false;  // wait for it again; count afresh when it is back
        return;
    }
    const int64 waiting = query_int(
        "SELECT pg_catalog.count(*) FROM bunce.outbox WHERE next_attempt_at > pg_catalog.statement_timestamp() AND sending_since IS NULL");
    if (now - last_recount >= kRecountUs) {
        last_recount = now;
        release_claims(false);
        recount_queue();
    }
    end();
    SpinLockAcquire(&shared->mutex);
    shared->waiting_retry = waiting;
    SpinLockRelease(&shared->mutex);
}

// Why no new requests may start now, or nullptr.
char key_problem[256];  // why bunce.api_key_file cannot be used, or empty

const char *config_problem() {
    static char problem[256];
    if (key_problem[0]) return key_problem;
    if (!api_key()[0]) return "bunce.api_key is not set";
    CoreError err;
    bool bad = false;
    if (!guarded(err, [&] {
            if (auto p = bunce::api_url_problem(api_url)) {
                strlcpy(problem, p->c_str(), sizeof problem);
                bad = true;
            }
        }))
        return "bunce.api_url could not be checked";
    return bad ? problem : nullptr;
}

void worker_exit(int, Datum) {
    SpinLockAcquire(&shared->mutex);
    shared->worker_latch = nullptr;
    shared->pid = 0;
    shared->state = WORKER_STOPPED;
    shared->in_flight = 0;
    SpinLockRelease(&shared->mutex);
}

// Settings from ALTER DATABASE/ROLE ... SET (which a database owner may make) were applied
// when this session started. The worker runs as a superuser: none of them may change what
// its SQL resolves to (search_path: every statement is schema-qualified, and operators and
// types then resolve in pg_catalog), the role it runs as, or stop it (timeouts, read-only).
void pin_session_settings() {
    static const char *const pinned[][2] = {
        {"search_path", "pg_catalog, pg_temp"},
        {"role", "none"},
        {"statement_timeout", "0"},
        {"lock_timeout", "0"},
        {"idle_in_transaction_session_timeout", "0"},
        {"idle_session_timeout", "0"},
        {"default_transaction_read_only", "off"},
        {"default_transaction_isolation", "read committed"},
        {"default_transaction_deferrable", "off"},
        {"session_replication_role", "origin"},
        {"enable_indexscan", "on"},
        {"enable_indexonlyscan", "on"},
        {"enable_bitmapscan", "on"},
        {"jit", "off"},
        {"seq_page_cost", "1"},
        {"random_page_cost", "4"},
        {"cpu_tuple_cost", "0.01"},
        {"cpu_index_tuple_cost", "0.005"},
        {"cpu_operator_cost", "0.0025"},
        {"plan_cache_mode", "auto"},
        {"synchronous_commit", "on"},  // a delivered event's delete is durable: fewer re-sends
    };
    for (const auto &p : pinned) SetConfigOption(p[0], p[1], PGC_SUSET, PGC_S_OVERRIDE);
}

// (Re-)reads bunce.api_key_file; what stops it stops delivery (see config_problem).
void reload_api_key() {
    if (load_api_key(key_problem, sizeof key_problem)) key_problem[0] = '\0';
}

// Tells a changed key apart without keeping a copy of it (nor a C++ object alive across
// ProcessConfigFile, which may ERROR).
uint64 key_fingerprint() {
    const char *k = api_key();
    return hash_bytes_extended(reinterpret_cast<const unsigned char *>(k), static_cast<int>(strlen(k)), 0);
}

long ms_until(TimestampTz t, TimestampTz now) {
    if (t <= now) return 0;
    return static_cast<long>(Min((t - now + 999) / 1000, static_cast<int64>(INT_MAX)));
}

}  // namespace

void register_worker() {
    BackgroundWorker w;
    memset(&w, 0, sizeof w);
    w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
    // Not in recovery: a standby sends nothing; the worker starts on promotion.
    w.bgw_start_time = BgWorkerStart_RecoveryFinished;
    w.bgw_restart_time = 1;
    strlcpy(w.bgw_library_name, "bunce", BGW_MAXLEN);
    strlcpy(w.bgw_function_name, "bunce_worker_main", BGW_MAXLEN);
    strlcpy(w.bgw_name, "bunce worker", BGW_MAXLEN);
    strlcpy(w.bgw_type, "bunce worker", BGW_MAXLEN);
    RegisterBackgroundWorker(&w);
}

}  // namespace bunce_pg

using namespace bunce_pg;

void bunce_worker_main(Datum) {
    pqsignal(SIGHUP, SignalHandlerForConfigReload);
    pqsignal(SIGTERM, handle_sigterm);
    BackgroundWorkerUnblockSignals();
    BackgroundWorkerInitializeConnection(database, nullptr, 0);
    pin_session_settings();
    reload_api_key();
    // Payload-sized buffers (up to bunce.max_payload_size each) go back to the system when
    // freed: a fixed threshold stops glibc from raising it after the first large free and
    // then keeping such buffers in the heap for good.
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);

    before_shmem_exit(worker_exit, 0);
    SpinLockAcquire(&shared->mutex);
    shared->worker_latch = MyLatch;
    shared->database_id = MyDatabaseId;
    shared->pid = MyProcPid;
    shared->started_at = GetCurrentTimestamp();
    shared->state = WORKER_STARTING;
    shared->paused_reason[0] = '\0';
    SpinLockRelease(&shared->mutex);
    ereport(LOG, (errmsg("bunce worker started for database \"%s\"", database)));

    delivery_start();
    delivery_configure();
    // Made once: libcurl's sockets are all behind one epoll descriptor, so a wake-up costs the
    // same with 1 or 1000 requests in flight.
    WaitEventSet *wait_set = CreateWaitEventSet(TopMemoryContext, 3);
    AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, nullptr);
    AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, nullptr, nullptr);
    AddWaitEventToSet(wait_set, WL_SOCKET_READABLE, delivery_poll_fd(), nullptr, nullptr);

    loop_cxt = AllocSetContextCreate(TopMemoryContext, "bunce worker loop", ALLOCSET_DEFAULT_SIZES);
    TimestampTz stop_deadline = 0;

    for (;;) {
        MemoryContextReset(loop_cxt);
        MemoryContextSwitchTo(loop_cxt);
        CHECK_FOR_INTERRUPTS();

        if (ConfigReloadPending) {
            ConfigReloadPending = false;
            const uint64 old_key = key_fingerprint();
            ProcessConfigFile(PGC_SIGHUP);
            reload_api_key();
            delivery_configure();
            if (old_key != key_fingerprint() && auth_backoff_s) {
                // A new key: try it now instead of waiting out the backoff.
                paused_until = 0;
                auth_backoff_s = 0;
            }
            look_for_work = true;
        }
        TimestampTz now = GetCurrentTimestamp();
        if (stop_requested && stop_deadline == 0)
            stop_deadline = now + 2 * USECS_PER_SEC;  // let requests in flight finish briefly

        if (!extension_ready && !check_extension()) {
            set_state(WORKER_WAITING_EXTENSION, "extension bunce is not installed in this database", 0);
            if (stop_requested) proc_exit(1);
            (void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 5000, PG_WAIT_EXTENSION);
            ResetLatch(MyLatch);
            continue;
        }

        // What may start now.
        const char *problem = config_problem();
        if (paused_until && paused_until <= now) {
            paused_until = 0;
            look_for_work = true;
        }
        if (stop_requested)
            set_state(WORKER_STOPPED, "stopping", 0);
        else if (!enabled)
            set_state(WORKER_DISABLED, "bunce.enabled is off", 0);
        else if (problem)
            set_state(WORKER_PAUSED, problem, 0);
        else if (paused_until)
            set_state(WORKER_PAUSED, pause_reason, paused_until);
        else
            set_state(WORKER_RUNNING, nullptr, 0);
        const bool may_send = !stop_requested && enabled && !problem && !paused_until;

        int slots = may_send ? max_in_flight - in_flight() : 0;
        int64 limiter_us = 0;
        if (slots > 0 && rate_limit > 0) {
            limiter_us = limiter_wait_us();
            slots = limiter_us == 0 ? 1 : 0;  // evenly spaced: one at a time when limited
        }
        if (next_due && next_due <= now) look_for_work = true;

        Answer *results = nullptr;
        const int nresults = delivery_collect(&results);
        int nclaimed = 0;
        if (nresults > 0 || (slots > 0 && look_for_work)) {
            if (slots > 0 && look_for_work) {
                // Before the claim's snapshot: a commit from here on must signal again.
                pg_atomic_write_u32(&shared->work_signalled, 0);
                pg_memory_barrier();
            }
            begin("bunce: recording answers and claiming events");
            int delivered = 0, dead = 0, removed = 0, oversize = 0;
            const Answer *last_error = nullptr;
            if (nresults > 0) removed = record(results, nresults, &delivered, &dead, &last_error);
            // Re-evaluate: an answer may just have paused the sender.
            if (slots > 0 && look_for_work && !paused_until) {
                nclaimed = claim(slots, &oversize);
                look_for_work = nclaimed + oversize == slots;  // a full batch: there may be more
                if (!look_for_work) next_due = query_next_due();
            }
            end();
            if (nresults > 0 || oversize > 0)
                publish_results(delivered, dead + oversize, last_error, removed + oversize);
        }
        if (nclaimed > 0) {
            delivery_submit_staged();
            count_requests(nclaimed);
            SpinLockAcquire(&shared->mutex);
            shared->in_flight = in_flight();
            shared->requests_last_minute = requests_last_minute();
            SpinLockRelease(&shared->mutex);
        }

        if (stop_requested && (in_flight() == 0 || now >= stop_deadline)) {
            ereport(LOG, (errmsg("bunce worker stopping")));
            proc_exit(1);  // non-zero: restarted if this was not a server shutdown
        }

        now = GetCurrentTimestamp();
        prune_deliveries(now);
        housekeeping(now);
        // A background worker reports its table statistics itself; without them autovacuum
        // would not see the outbox's deletes and updates.
        const long stats_ms = pgstat_report_stat(false);

        // Wait for: the latch (a commit, SIGHUP, SIGTERM), a socket, libcurl's timer, the
        // next retry coming due, the rate limiter, the end of a pause.
        const long curl_ms = delivery_timeout_ms();
        long timeout = ms_until(last_housekeeping + kHousekeepingUs, now);
        if (curl_ms >= 0) timeout = Min(timeout, curl_ms);
        if (look_for_work && may_send) timeout = limiter_us > 0 ? Min(timeout, (limiter_us + 999) / 1000) : (in_flight() < max_in_flight ? 0 : timeout);
        if (next_due) timeout = Min(timeout, ms_until(next_due, now));
        if (paused_until) timeout = Min(timeout, ms_until(paused_until, now));
        if (stop_requested) timeout = Min(timeout, ms_until(stop_deadline, now));
        if (stats_ms > 0) timeout = Min(timeout, stats_ms);
        WaitEvent events[3];
        const int nevents = WaitEventSetWait(wait_set, timeout, events, lengthof(events), PG_WAIT_EXTENSION);
        for (int i = 0; i < nevents; i++) {
            if (events[i].events & WL_LATCH_SET) {
                ResetLatch(MyLatch);
                look_for_work = true;
            } else if (events[i].events & WL_SOCKET_READABLE) {
                delivery_on_ready();
            }
        }
        delivery_on_timeout();
    }
}
