// The worker's SQL. Each statement is prepared once and kept; an error names the statement.
#include <cstring>

#include "claim.hpp"
#include "event_catalog.hpp"
#include "outbox.hpp"
#include "settings.hpp"
#include "shmem.hpp"
#include "worker_sql.hpp"

extern "C" {
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/transam.h"
#include "storage/procarray.h"
#include "utils/xid8.h"
#include "access/xact.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "pgstat.h"
#include "utils/array.h"
#include "catalog/namespace.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/fmgroids.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
}

namespace bunce_pg {

volatile sig_atomic_t in_transaction = false;

namespace {

void reset_frontier();  // (the frontier of new rows, see claim_events)

struct Statement {
    const char *name;  // in errors
    SPIPlanPtr plan;
};
Statement delivered_stmt{"removing delivered events"},
    delivered_logged_stmt{"moving delivered events to bunce.deliveries"},
    dead_stmt{"moving events to bunce.dead_letters"}, retry_stmt{"scheduling retries"},
    next_due_stmt{"finding the next retry"}, promote_stmt{"giving customers their next event"};

void prepare(Statement &s, const char *sql, int nargs, Oid *types) {
    s.plan = SPI_prepare(sql, nargs, types);
    if (!s.plan)
        elog(ERROR, "bunce worker: could not prepare the statement for %s: %s", s.name,
             SPI_result_code_string(SPI_result));
    SPI_keepplan(s.plan);
}

void prepare_statements() {
    if (delivered_stmt.plan) return;
    // An answer is recorded on the row as it was claimed: same id, same idempotency key, same
    // attempt. (An answer to a claim released since, or to an event of an extension dropped and
    // created again, whose ids start over, changes nothing.) $1-$3 name the claims answered.
    Oid del_types[] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, INT4ARRAYOID};
#define ANSWERED                                                                     \
    "ROWS FROM (pg_catalog.unnest($1::bigint[]), pg_catalog.unnest($2::integer[]), " \
    "pg_catalog.unnest($3::text[])"
#define ANSWERED_ROW "o.id = a.id AND o.attempts = a.attempts AND o.idempotency_key = a.key::pg_catalog.uuid"
    // Each statement that removes events returns their ordering keys (see promote()).
    prepare(delivered_stmt,
            "DELETE FROM bunce.outbox o USING " ANSWERED ") AS a(id, attempts, key) WHERE " ANSWERED_ROW
            " RETURNING o.ordering_key, o.enqueued_at",
            3, del_types);
    prepare(
        delivered_logged_stmt,
        "WITH a AS (SELECT * FROM " ANSWERED
        ", pg_catalog.unnest($4::integer[])) AS a(id, attempts, key, status)), "
        "d AS (DELETE FROM bunce.outbox o USING a WHERE " ANSWERED_ROW
        "      RETURNING o.id, o.event_id, o.idempotency_key, a.status, o.attempts, o.enqueued_at, o.ordering_key), "
        "i AS (INSERT INTO bunce.deliveries (id, event_id, idempotency_key, http_status, attempts, enqueued_at) "
        "      SELECT id, event_id, idempotency_key, status, attempts, enqueued_at FROM d "
        "      ON CONFLICT (id) DO UPDATE SET delivered_at = pg_catalog.now(), http_status = excluded.http_status, "
        "                                     attempts = excluded.attempts) "
        "SELECT ordering_key, enqueued_at FROM d",
        4, del_types);
    Oid dead_types[] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, INT4ARRAYOID,
                        TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
    prepare(dead_stmt,
            "WITH a AS (SELECT * FROM " ANSWERED
            ", pg_catalog.unnest($4::integer[]), "
            "                         pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::text[]), "
            "                         pg_catalog.unnest($7::text[])) "
            "           AS a(id, attempts, key, status, message, reason, response)), "
            "d AS (DELETE FROM bunce.outbox o USING a WHERE " ANSWERED_ROW
            "      RETURNING o.*, a.status AS a_status, a.message AS a_message, a.reason AS a_reason, "
            "                a.response AS a_response), "
            "i AS (INSERT INTO bunce.dead_letters (id, event_id, payload, idempotency_key, reason, http_status, "
            "          message, response, attempts, enqueued_at, first_attempt_at, last_attempt_at) "
            "      SELECT id, event_id, payload, idempotency_key, a_reason, nullif(a_status, 0), a_message, "
            "             nullif(a_response, ''), attempts, enqueued_at, first_attempt_at, sending_since FROM d) "
            "SELECT ordering_key, id, a_reason, a_status FROM d",
            7, dead_types);
    Oid retry_types[] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, INT4ARRAYOID,
                         TEXTARRAYOID, INT8ARRAYOID, INT4ARRAYOID};
    prepare(retry_stmt,
            "UPDATE bunce.outbox o SET sending_since = NULL, "
            "       next_attempt_at = pg_catalog.statement_timestamp() + a.delay_ms * interval '1 millisecond', "
            "       last_status = nullif(a.status, 0), last_error = a.message, "
            "       attempts = o.attempts - a.uncounted "
            "FROM " ANSWERED
            ", pg_catalog.unnest($4::integer[]), pg_catalog.unnest($5::text[]), "
            "     pg_catalog.unnest($6::bigint[]), pg_catalog.unnest($7::integer[])) "
            "     AS a(id, attempts, key, status, message, delay_ms, uncounted) "
            "WHERE " ANSWERED_ROW,
            7, retry_types);
#undef ANSWERED
#undef ANSWERED_ROW
    // Parked events have next_attempt_at infinity: they are not retries.
    prepare(next_due_stmt,
            "SELECT next_attempt_at FROM bunce.outbox WHERE scheduled AND sending_since IS NULL "
            "AND next_attempt_at < 'infinity' ORDER BY next_attempt_at, id LIMIT 1",
            0, nullptr);
    // The first scheduled event of each key whose event was removed, when it is parked,
    // becomes due now. (The first: a row committed late, concurrently with the others, may
    // have a smaller id than the event just answered.)
    Oid promote_types[] = {INT8ARRAYOID};
    prepare(promote_stmt,
            "UPDATE bunce.outbox o SET next_attempt_at = pg_catalog.statement_timestamp() "
            "FROM (SELECT (SELECT p.id FROM bunce.outbox p WHERE p.scheduled AND p.ordering_key = k.k "
            "              ORDER BY p.id LIMIT 1) AS id "
            "      FROM (SELECT DISTINCT k FROM pg_catalog.unnest($1::bigint[]) AS u(k)) k) n "
            "WHERE o.id = n.id AND o.next_attempt_at = 'infinity' AND o.sending_since IS NULL",
            1, promote_types);
}

void run(const Statement &s, Datum *args, int expected) {
    const int rc = SPI_execute_plan(s.plan, args, nullptr, false, 0);
    if (rc != expected) elog(ERROR, "bunce worker: %s failed: %s", s.name, SPI_result_code_string(rc));
}

// A one-off statement returning one bigint (0 for NULL).
int64 query_int(const char *what, const char *sql, int nargs = 0, Oid *types = nullptr, Datum *args = nullptr) {
    if (SPI_execute_with_args(sql, nargs, types, args, nullptr, false, 0) != SPI_OK_SELECT || SPI_processed != 1)
        elog(ERROR, "bunce worker: %s failed", what);
    bool isnull;
    const Datum d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
    return isnull ? 0 : DatumGetInt64(d);
}

// The arrays of one statement: the claims answered, and per statement what it records.
struct Batch {
    int n;
    Datum *ids, *attempts, *keys, *statuses, *messages, *extra, *extra2;
};

void batch_init(Batch *b, int cap) {
    b->n = 0;
    for (Datum **a : {&b->ids, &b->attempts, &b->keys, &b->statuses, &b->messages, &b->extra, &b->extra2})
        *a = static_cast<Datum *>(palloc(sizeof(Datum) * cap));
}

// Starts the batch's next entry with the claim answered.
void add_claim(Batch *b, int64 id, int attempts, const char *key, int status) {
    b->ids[b->n] = Int64GetDatum(id);
    b->attempts[b->n] = Int32GetDatum(attempts);
    b->keys[b->n] = CStringGetTextDatum(key);
    b->statuses[b->n] = Int32GetDatum(status);
}

Datum int8s(Datum *d, int n) { return PointerGetDatum(construct_array(d, n, INT8OID, 8, true, TYPALIGN_DOUBLE)); }
Datum int4s(Datum *d, int n) { return PointerGetDatum(construct_array(d, n, INT4OID, 4, true, TYPALIGN_INT)); }
Datum texts(Datum *d, int n) { return PointerGetDatum(construct_array(d, n, TEXTOID, -1, false, TYPALIGN_INT)); }

void add_dead(Batch *b, int64 id, int attempts, const char *key, int status, const char *message, const char *reason,
              const char *response) {
    add_claim(b, id, attempts, key, status);
    b->messages[b->n] = CStringGetTextDatum(message);
    b->extra[b->n] = CStringGetTextDatum(reason);
    b->extra2[b->n] = CStringGetTextDatum(response);
    b->n++;
}

// After events were removed (their keys in SPI_tuptable): the next event of each key may go.
// Returns how many became due.
int parked_here = 0;  // events parked, as far as the worker knows (recounted every 5 s)

// The next event of each key in `keys` (bigint[]) goes now if it waits for its turn.
int promote_keys(Datum keys) {
    Datum args[] = {keys};
    run(promote_stmt, args, SPI_OK_UPDATE);
    parked_here -= static_cast<int>(SPI_processed);
    return static_cast<int>(SPI_processed);
}

int promote() {
    if (parked_here <= 0) return 0;  // (release_turns catches what a wrong count would miss)
    const int n = static_cast<int>(SPI_processed);
    Datum *keys = static_cast<Datum *>(palloc(sizeof(Datum) * Max(n, 1)));
    int nkeys = 0;
    for (int i = 0; i < n; i++) {
        bool isnull;
        const Datum k = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
        if (!isnull) keys[nkeys++] = k;
    }
    return nkeys == 0 ? 0 : promote_keys(int8s(keys, nkeys));
}

// The time from enqueue to now of the events the last statement delivered (its second column).
void time_delivered(Recorded *out) {
    const TimestampTz now = GetCurrentTimestamp();
    for (uint64 i = 0; i < SPI_processed; i++) {
        bool isnull;
        const Datum at = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull);
        if (isnull) continue;
        const double s = static_cast<double>(now - DatumGetTimestampTz(at)) / USECS_PER_SEC;
        out->latency_buckets[bunce::latency_bucket(s)]++;
        out->latency_sum_s += Max(s, 0.0);
    }
}

MemoryContext caller_cxt;           // current at begin(), current again after end()
List *pending_notifications = NIL;  // payloads for NOTIFY bunce, in caller_cxt (see notify())

// Notes for NOTIFY bunce each dead letter the last statement wrote (columns 2-4: id, reason,
// status); they are sent after the transaction (see send_notifications()).
void notify_dead_letters() {
    for (uint64 i = 0; i < SPI_processed; i++) {
        HeapTuple t = SPI_tuptable->vals[i];
        bool id_null, status_null;
        const int64 id = DatumGetInt64(SPI_getbinval(t, SPI_tuptable->tupdesc, 2, &id_null));
        const char *reason = SPI_getvalue(t, SPI_tuptable->tupdesc, 3);
        const int status = DatumGetInt32(SPI_getbinval(t, SPI_tuptable->tupdesc, 4, &status_null));
        MemoryContext old = MemoryContextSwitchTo(caller_cxt);
        StringInfoData j;
        initStringInfo(&j);
        appendStringInfoString(&j, "{\"event\": \"dead_letter\", \"database\": ");
        escape_json(&j, my_slot->database);
        appendStringInfo(&j, ", \"id\": " INT64_FORMAT ", \"reason\": ", id);
        escape_json(&j, reason ? reason : "");
        if (status != 0 && !status_null)
            appendStringInfo(&j, ", \"http_status\": %d}", status);
        else
            appendStringInfoString(&j, ", \"http_status\": null}");
        pending_notifications = lappend(pending_notifications, j.data);
        MemoryContextSwitchTo(old);
    }
}

int write_dead(Batch *b) {
    Datum args[] = {int8s(b->ids, b->n),      int4s(b->attempts, b->n), texts(b->keys, b->n),  int4s(b->statuses, b->n),
                    texts(b->messages, b->n), texts(b->extra, b->n),    texts(b->extra2, b->n)};
    run(dead_stmt, args, SPI_OK_SELECT);
    notify_dead_letters();
    return promote();
}

}  // namespace

// NOTIFY bunce, in a transaction of its own: a full notification queue (a session that
// listens and never reads holds it) fails the commit, and that must not stop delivery. The
// notifications are dropped then, with a warning.
void notify(List *payloads) {
    if (payloads == NIL) return;
    MemoryContext cxt = CurrentMemoryContext;
    in_transaction = true;
    StartTransactionCommand();
    PG_TRY();
    {
        ListCell *lc;
        foreach (lc, payloads) Async_Notify("bunce", static_cast<const char *>(lfirst(lc)));
        CommitTransactionCommand();
    }
    PG_CATCH();
    {
        MemoryContextSwitchTo(cxt);
        ErrorData *e = CopyErrorData();
        FlushErrorState();
        AbortCurrentTransaction();
        ereport(WARNING, (errmsg("bunce worker: %d notifications on channel bunce were dropped: %s",
                                 list_length(payloads), e->message)));
        FreeErrorData(e);
    }
    PG_END_TRY();
    in_transaction = false;
    MemoryContextSwitchTo(cxt);
}

void send_notifications() {
    List *payloads = pending_notifications;
    pending_notifications = NIL;
    notify(payloads);
}

void begin(const char *activity) {
    caller_cxt = CurrentMemoryContext;
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
    MemoryContextSwitchTo(caller_cxt);
}

namespace {

// The schema versions this library's SQL works with: from the first with bunce.claim() to its
// own. (A newer schema may have changed what this code reads and writes.) 1.4: ordering.
constexpr const char *kOldestSchema = "1.4";
Oid delivering_extension = InvalidOid;  // the extension delivered for since start_delivering()

// Compares "major.minor" versions.
int compare_versions(const char *a, const char *b) {
    int a1 = 0, a2 = 0, b1 = 0, b2 = 0;
    sscanf(a, "%d.%d", &a1, &a2);
    sscanf(b, "%d.%d", &b1, &b2);
    return a1 != b1 ? (a1 < b1 ? -1 : 1) : (a2 != b2 ? (a2 < b2 ? -1 : 1) : 0);
}

}  // namespace

// Reads pg_extension through its name index: cheap enough for every claim.
ExtensionCheck check_extension(char *why, size_t size) {
    Relation rel = table_open(ExtensionRelationId, AccessShareLock);
    ScanKeyData key;
    ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ, CStringGetDatum("bunce"));
    SysScanDesc scan = systable_beginscan(rel, ExtensionNameIndexId, true, nullptr, 1, &key);
    HeapTuple tuple = systable_getnext(scan);
    ExtensionCheck check = EXTENSION_READY;
    if (!HeapTupleIsValid(tuple)) {
        strlcpy(why, "extension bunce is not installed in this database", size);
        check = EXTENSION_MISSING;
    } else {
        const Oid oid = reinterpret_cast<Form_pg_extension>(GETSTRUCT(tuple))->oid;
        bool isnull;
        const Datum d = heap_getattr(tuple, Anum_pg_extension_extversion, RelationGetDescr(rel), &isnull);
        const char *version = isnull ? "" : TextDatumGetCString(d);
        if (compare_versions(version, kOldestSchema) < 0) {
            snprintf(why, size,
                     "extension bunce is at version %s here, the library needs %s or later: run ALTER EXTENSION "
                     "bunce UPDATE",
                     version, kOldestSchema);
            check = EXTENSION_OTHER_VERSION;
        } else if (compare_versions(version, BUNCE_VERSION) > 0) {
            snprintf(why, size,
                     "extension bunce is at version %s here, the library loaded is %s: restart the server to load "
                     "the library of version %s",
                     version, BUNCE_VERSION, version);
            check = EXTENSION_OTHER_VERSION;
        } else if (OidIsValid(delivering_extension) && oid != delivering_extension) {
            strlcpy(why, "extension bunce was dropped and created again", size);
            check = EXTENSION_REPLACED;
        }
        if (check == EXTENSION_READY) delivering_extension = oid;
    }
    systable_endscan(scan);
    table_close(rel, AccessShareLock);
    return check;
}

TimestampTz claims_left_before = 0;  // 0: the worker's start

void note_claims_abandoned() { claims_left_before = GetCurrentTimestamp(); }

void start_delivering() {
    prepare_statements();
    reset_frontier();
    release_claims(true);
    recount_queue();
}

void stop_delivering() { delivering_extension = InvalidOid; }

Recorded record_answers(const Answer *answers, int n) {
    Recorded out{};
    Batch ok, gone, again;
    batch_init(&ok, n);
    batch_init(&gone, n);
    batch_init(&again, n);
    for (int i = 0; i < n; i++) {
        const Answer &x = answers[i];
        if (x.outcome != bunce::Outcome::delivered) out.last_error = &x;
        switch (x.decision.action) {
            case bunce::RowAction::remove:
                add_claim(&ok, x.id, x.attempts, x.idempotency_key, x.status);
                ok.n++;
                break;
            case bunce::RowAction::dead_letter:
                add_dead(&gone, x.id, x.attempts, x.idempotency_key, x.status, x.message, x.decision.dead_letter_reason,
                         x.response);
                break;
            case bunce::RowAction::retry:
                add_claim(&again, x.id, x.attempts, x.idempotency_key, x.status);
                again.messages[again.n] = CStringGetTextDatum(x.message);
                again.extra[again.n] = Int64GetDatum(x.decision.retry_delay_ms);
                again.extra2[again.n] = Int32GetDatum(x.decision.attempt_counted ? 0 : 1);
                again.n++;
                break;
        }
    }
    if (ok.n) {
        Datum args[] = {int8s(ok.ids, ok.n), int4s(ok.attempts, ok.n), texts(ok.keys, ok.n), int4s(ok.statuses, ok.n)};
        if (delivery_log_retention_s > 0)
            run(delivered_logged_stmt, args, SPI_OK_SELECT);
        else
            run(delivered_stmt, args, SPI_OK_DELETE_RETURNING);
        time_delivered(&out);
        out.promoted += promote();
    }
    if (gone.n) out.promoted += write_dead(&gone);
    if (again.n) {
        Datum args[] = {int8s(again.ids, again.n),      int4s(again.attempts, again.n), texts(again.keys, again.n),
                        int4s(again.statuses, again.n), texts(again.messages, again.n), int8s(again.extra, again.n),
                        int4s(again.extra2, again.n)};
        run(retry_stmt, args, SPI_OK_UPDATE);
    }
    out.delivered = ok.n;
    out.dead = gone.n;
    out.retried = again.n;
    return out;
}

namespace {

// A claim lasts at most a request's time limit; one this much older is held by no request.
constexpr int kClaimMarginMs = 30000;

/* New rows. The claim looks for them above `scanned_to` (every row visible with an id up to
 * it has been placed), through the primary key, so the scan costs what is new. A row that is
 * not visible yet belongs to a transaction still running; if it holds ids up to scanned_to,
 * its rows can appear below it when it commits. Transactions publish that they hold ids
 * (IdHolder, from their first id on, before taking it): the worker keeps those it has seen as
 * `open`, and once one has ended, the claim also looks from its first id, in the same snapshot
 * in which it finds the rows that may follow them. So a long transaction costs nothing until
 * it ends, and then one scan from its first id. Ids handed out after the holders were read
 * are above the sequence's end read just before: scanned_to never passes that. Rows written
 * with ids of their own (a restore, by hand) below scanned_to are found by a scan from the
 * start every 10 minutes, and when the worker starts.
 */
struct OpenHolder {
    FullTransactionId xid;
    int64 first;
};
OpenHolder *open_holders = nullptr;  // open_capacity() of them
int n_open = 0;
int64 scanned_to = 0;
TimestampTz last_full_scan = 0;
constexpr int64 kFullScanUs = 600 * USECS_PER_SEC;

Oid sequence = InvalidOid;  // bunce.event_id_seq of the extension delivered for

// Where the ids handed out so far end: the last block's start plus its length; 0 before the
// first.
int64 ids_handed_out() {
    LOCAL_FCINFO(fcinfo, 1);
    InitFunctionCallInfoData(*fcinfo, nullptr, 1, InvalidOid, nullptr, nullptr);
    fcinfo->args[0].value = ObjectIdGetDatum(sequence);
    fcinfo->args[0].isnull = false;
    const Datum last = pg_sequence_last_value(fcinfo);
    return fcinfo->isnull ? 0 : DatumGetInt64(last) + kIdBlock - 1;
}

void reset_frontier() {
    sequence = get_relname_relid("event_id_seq", get_namespace_oid("bunce", false));
    parked_here = 1;  // not known yet: promote until the first count
    scanned_to = 0;
    n_open = 0;
    last_full_scan = GetCurrentTimestamp();
}

int open_capacity() { return 2 * (n_backend_holders + n_prepared_holders); }

// False when there is no room (ended ones are kept until a claim looked through them).
bool note_open(FullTransactionId xid, int64 first) {
    for (int i = 0; i < n_open; i++)
        if (FullTransactionIdEquals(open_holders[i].xid, xid)) {
            open_holders[i].first = Min(open_holders[i].first, first);
            return true;
        }
    if (n_open == open_capacity()) return false;
    open_holders[n_open++] = {xid, first};
    return true;
}

// Adds the transactions that hold ids here to `open`, and frees the slots of prepared ones
// that ended (seen now). False while one takes its first block (its ids are not known yet),
// or when `open` has no room: then the next claim looks from the start.
bool read_holders() {
    if (!open_holders)
        open_holders =
            static_cast<OpenHolder *>(MemoryContextAlloc(TopMemoryContext, sizeof(OpenHolder) * open_capacity()));
    bool known = true;
    for (int i = 0; i < n_backend_holders + n_prepared_holders; i++) {
        IdHolder *h = &id_holders[i];
        const uint64 first = pg_atomic_read_u64(&h->first);
        if (first == 0) continue;
        pg_read_barrier();
        const FullTransactionId xid = h->xid;
        const bool prepared = i >= n_backend_holders;
        if (h->database != MyDatabaseId) {
            // The slots of prepared transactions are shared by all databases: those of a
            // database no worker serves are freed here once they end (its worker, when it
            // starts, scans its outbox from the start anyway).
            if (prepared && first != kTakingIds && !slot_of_database(h->database) &&
                !TransactionIdIsInProgress(XidFromFullTransactionId(xid)))
                pg_atomic_write_u64(&h->first, 0);
            continue;
        }
        if (first == kTakingIds) {
            known = false;
            continue;
        }
        if (!note_open(xid, static_cast<int64>(first))) {
            known = false;
            last_full_scan = 0;
            continue;
        }
        if (prepared && !TransactionIdIsInProgress(XidFromFullTransactionId(xid))) pg_atomic_write_u64(&h->first, 0);
    }
    return known;
}

// After a claim that placed every new row it saw up to `covered`: the open transactions that
// had ended in `snap` were looked through, unless the claim stopped short.
void advance_frontier(Snapshot snap, int64 covered, int64 sequence_end, bool known) {
    if (covered >= scanned_to) {
        int kept = 0;
        for (int i = 0; i < n_open; i++)
            if (!transaction_ended(open_holders[i].xid, snap)) open_holders[kept++] = open_holders[i];
        n_open = kept;
    }
    if (known) scanned_to = Max(scanned_to, Min(covered, sequence_end));
}

// What the worker does with each row the claim hands over.
struct Staging {
    int parked, rows;
    Batch big;
    MemoryContext row_cxt;
    bool unknown_event;
};

void stage_row(const ClaimedRow &row, void *arg) {
    auto *s = static_cast<Staging *>(arg);
    s->rows++;
    if (row.parked) {
        s->parked++;
        return;
    }
    // The payload arrives as jsonb, still compressed or in TOAST, and becomes text one row at
    // a time: the claim never holds more than one payload besides those staged.
    MemoryContext old = MemoryContextSwitchTo(s->row_cxt);
    Jsonb *jb = DatumGetJsonbP(row.payload);
    // Enqueued payloads were measured as sent; one written by hand could write out to far
    // more than its stored size (numbers): that is not even made text.
    const bool huge = VARSIZE(jb) > 8 * static_cast<size_t>(max_payload_size);
    char *payload = huge ? nullptr : JsonbToCString(nullptr, &jb->root, VARSIZE(jb));
    // JSON on the wire is UTF-8, whatever the database's encoding.
    if (payload && GetDatabaseEncoding() != PG_UTF8)
        payload = pg_server_to_any(payload, static_cast<int>(strlen(payload)), PG_UTF8);
    const size_t size = payload ? strlen(payload) : VARSIZE(jb);
    MemoryContextSwitchTo(old);
    const char *key = DatumGetCString(DirectFunctionCall1(uuid_out, row.idempotency_key));
    if (size > static_cast<size_t>(max_payload_size)) {
        add_dead(&s->big, row.id, row.attempts, key, 0,
                 psprintf("not sent: the payload is %zu bytes, more than bunce.max_payload_size (%d bytes)", size,
                          max_payload_size),
                 "invalid", "");
    } else {
        sender_stage(row.id, row.attempts, DatumGetCString(DirectFunctionCall1(uuid_out, row.event_id)), payload, key);
        s->unknown_event |= !catalog_has_event(DatumGetUUIDP(row.event_id));
    }
    MemoryContextReset(s->row_cxt);
}

}  // namespace

// A payload over bunce.max_payload_size (enqueued before the limit was lowered, or written
// into the outbox by hand) is not sent: it becomes a dead letter at once, so the worker never
// holds more than bunce.max_in_flight payloads of that size.
Claimed claim_events(int limit) {
    Snapshot snap = GetActiveSnapshot();  // the transaction's, taken before the claim
    int64 from = scanned_to;
    const TimestampTz now = GetCurrentTimestamp();
    if (now - last_full_scan >= kFullScanUs) {
        from = 0;
        last_full_scan = now;
    }
    // The sequence's end before the holders: ids handed out later are above it.
    const int64 sequence_end = ids_handed_out();
    const bool known = read_holders();
    FullTransactionId *xids = static_cast<FullTransactionId *>(palloc(sizeof(FullTransactionId) * (n_open + 1)));
    int64 *firsts = static_cast<int64 *>(palloc(sizeof(int64) * (n_open + 1)));
    for (int i = 0; i < n_open; i++) {
        xids[i] = open_holders[i].xid;
        firsts[i] = open_holders[i].first;
    }
    const ClaimRequest req{limit, from, ordering == ORDERING_CUSTOMER, n_open, xids, firsts};
    Staging s{0, 0, {}, AllocSetContextCreate(CurrentMemoryContext, "bunce claim row", ALLOCSET_DEFAULT_SIZES), false};
    batch_init(&s.big, limit);
    const int64 covered = claim(req, stage_row, &s);
    MemoryContextDelete(s.row_cxt);
    advance_frontier(snap, covered, sequence_end, known);
    parked_here += s.parked;
    Claimed out{s.rows - s.parked - s.big.n, s.big.n, covered != PG_INT64_MAX, 0, s.unknown_event};
    if (s.big.n) out.promoted = write_dead(&s.big);
    return out;
}

TimestampTz next_due() {
    run(next_due_stmt, nullptr, SPI_OK_SELECT);
    if (SPI_processed == 0) return 0;  // (none, or only parked events)
    bool isnull;
    return DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

int64 count_waiting_retry() {
    return query_int("counting retries",
                     "SELECT pg_catalog.count(*) FROM bunce.outbox WHERE scheduled "
                     "AND next_attempt_at > pg_catalog.statement_timestamp() AND next_attempt_at < 'infinity' "
                     "AND sending_since IS NULL");
}

// Parked events are due once their key has no other scheduled event before them; answers do
// that as they come (promote). This catches the rest: an event deleted by hand, a key set to
// NULL by hand, a change of bunce.ordering to none (then every parked event goes). Visits
// each key once, through the key index.
void release_turns() {
    if (ordering == ORDERING_NONE) {
        query_int("releasing parked events",
                  "WITH r AS (UPDATE bunce.outbox SET next_attempt_at = pg_catalog.statement_timestamp() "
                  "WHERE scheduled AND next_attempt_at = 'infinity' AND sending_since IS NULL RETURNING 1) "
                  "SELECT pg_catalog.count(*) FROM r");
        return;
    }
    if (SPI_execute("WITH RECURSIVE k(k) AS ("
                    "  (SELECT ordering_key FROM bunce.outbox WHERE scheduled AND ordering_key IS NOT NULL "
                    "   ORDER BY ordering_key LIMIT 1) "
                    "  UNION ALL "
                    "  SELECT (SELECT o.ordering_key FROM bunce.outbox o WHERE o.scheduled AND o.ordering_key > k.k "
                    "          ORDER BY o.ordering_key LIMIT 1) FROM k WHERE k.k IS NOT NULL) "
                    "SELECT pg_catalog.array_agg(k) FROM k WHERE k IS NOT NULL",
                    false, 0) != SPI_OK_SELECT ||
        SPI_processed != 1)
        elog(ERROR, "bunce worker: finding the customers with events scheduled failed");
    bool isnull;
    const Datum keys = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
    if (!isnull) promote_keys(keys);
    query_int("releasing parked events without a customer",
              "WITH r AS (UPDATE bunce.outbox SET next_attempt_at = pg_catalog.statement_timestamp() "
              "WHERE scheduled AND ordering_key IS NULL AND next_attempt_at = 'infinity' AND sending_since IS NULL "
              "RETURNING 1) SELECT pg_catalog.count(*) FROM r");
}

// At start-up all claims (what a crash or a stop left behind); later those older than a
// request can last (left by an earlier worker), and claims on rows the worker never placed
// (restored with the outbox, written by hand; the claim skips those). Such an event was
// possibly sent: it is marked, counted and sent again, with the same Idempotency-Key, first of
// its key (scheduled, due now).
void release_unsent(Datum ids) {
    Oid types[] = {INT8ARRAYOID};
    query_int("releasing claims not sent",
              "WITH r AS (UPDATE bunce.outbox o SET sending_since = NULL, attempts = o.attempts - 1 "
              "           FROM (SELECT id FROM bunce.outbox WHERE id = ANY ($1) AND sending_since IS NOT NULL "
              "                 FOR UPDATE SKIP LOCKED) s WHERE o.id = s.id RETURNING 1) "
              "SELECT pg_catalog.count(*) FROM r",
              1, types, &ids);
}

void release_claims(bool all) {
    char sql[640];
    char older[256] = "AND sending_since < $1 ";
    if (!all)  // the requests this worker has in flight may outlast a lowered request_timeout
        snprintf(older, sizeof older,
                 "AND (NOT scheduled OR (sending_since < pg_catalog.statement_timestamp() - "
                 "interval '%d milliseconds' AND id <> ALL ($1))) ",
                 request_timeout_ms + kClaimMarginMs);
    snprintf(sql, sizeof sql,
             "WITH r AS (UPDATE bunce.outbox SET sending_since = NULL, possible_duplicate = true, scheduled = true, "
             "next_attempt_at = least(next_attempt_at, pg_catalog.statement_timestamp()) "
             "WHERE sending_since IS NOT NULL %sRETURNING 1) SELECT pg_catalog.count(*) FROM r",
             older);
    Datum arg =
        all ? TimestampTzGetDatum(claims_left_before ? claims_left_before : MyStartTimestamp) : sender_held_ids();
    Oid types[] = {static_cast<Oid>(all ? TIMESTAMPTZOID : INT8ARRAYOID)};
    const int64 resent = query_int("releasing claims", sql, 1, types, &arg);
    if (resent == 0) return;
    SpinLockAcquire(&my_slot->mutex);
    my_slot->possibly_duplicated += resent;
    SpinLockRelease(&my_slot->mutex);
    ereport(
        LOG,
        (all ? errmsg("bunce worker: %lld events were in flight when delivery stopped; they will be sent again",
                      static_cast<long long>(resent))
             : errmsg(
                   "bunce worker: %lld events were claimed longer ago than a request can last; they will be sent again",
                   static_cast<long long>(resent)),
         errdetail(
             "Their rows in bunce.outbox are marked possible_duplicate; each request carries the same Idempotency-Key.")));
}

// The trigger that keeps a subscription's changes out of bunce's tables (replicated.cpp) works
// only while it is enabled for replica sessions; ALTER TABLE ... ENABLE TRIGGER ALL (which a
// data-only restore with --disable-triggers runs) sets it back to ordinary sessions. Said in
// the log once, while this database has a subscription.
void check_replica_triggers() {
    static bool warned = false;
    const int64 off = query_int(
        "checking the triggers against replicated changes",
        "SELECT CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_subscription WHERE subdbid = (SELECT oid FROM "
        "pg_catalog.pg_database WHERE datname = pg_catalog.current_database())) THEN 3 - (SELECT pg_catalog.count(*) "
        "FROM pg_catalog.pg_trigger WHERE tgname = 'ignore_replicated' AND tgenabled IN ('R', 'A') AND tgrelid IN "
        "('bunce.outbox'::pg_catalog.regclass, 'bunce.dead_letters'::pg_catalog.regclass, "
        "'bunce.deliveries'::pg_catalog.regclass)) ELSE 0 END");
    if (off > 0 && !warned)
        ereport(WARNING,
                (errmsg("bunce worker: a subscription of this database may apply other databases' events to bunce's "
                        "tables: trigger ignore_replicated is not enabled for replica sessions on %lld of them",
                        static_cast<long long>(off)),
                 errhint("Run ALTER TABLE ... ENABLE REPLICA TRIGGER ignore_replicated on bunce.outbox, "
                         "bunce.dead_letters and bunce.deliveries (ALTER TABLE ... ENABLE TRIGGER ALL resets it).")));
    warned = off > 0;
}

// Between counts bunce.status.queued follows commits (counted at commit in this database) and
// answers; a count corrects what those miss: COMMIT PREPARED, rows restored or written by
// hand, DELETEs by hand.
void recount_queue() {
    const uint64 committed = pg_atomic_read_u64(&my_slot->committed);
    const int64 queued = query_int("counting the queue", "SELECT pg_catalog.count(*) FROM bunce.outbox");
    const int64 turn = query_int("counting events waiting for their turn",
                                 "SELECT pg_catalog.count(*) FROM bunce.outbox WHERE scheduled "
                                 "AND next_attempt_at = 'infinity' AND sending_since IS NULL");
    SpinLockAcquire(&my_slot->mutex);
    my_slot->queued_base = queued;
    my_slot->waiting_turn = turn;
    parked_here = static_cast<int>(Min(turn, PG_INT32_MAX));
    my_slot->committed_at_base = committed;
    SpinLockRelease(&my_slot->mutex);
}

void prune_deliveries(TimestampTz now) {
    static TimestampTz last_prune = 0;
    if (now - last_prune < 60 * USECS_PER_SEC) return;
    last_prune = now;
    begin("bunce: pruning bunce.deliveries");
    // With retention 0 (the log is off) whatever is left goes, oldest first or not.
    const char *sql =
        delivery_log_retention_s == 0
            ? "WITH d AS (DELETE FROM bunce.deliveries WHERE id IN "
              "(SELECT id FROM bunce.deliveries LIMIT 5000) RETURNING 1) SELECT pg_catalog.count(*) FROM d"
            : "WITH d AS (DELETE FROM bunce.deliveries WHERE id IN (SELECT id FROM bunce.deliveries "
              "WHERE delivered_at < pg_catalog.now() - $1 * interval '1 second' ORDER BY delivered_at LIMIT 5000) "
              "RETURNING 1) SELECT pg_catalog.count(*) FROM d";
    Oid types[] = {INT4OID};
    Datum args[] = {Int32GetDatum(delivery_log_retention_s)};
    const int64 removed =
        query_int("pruning bunce.deliveries", sql, delivery_log_retention_s == 0 ? 0 : 1, types, args);
    end();
    if (removed == 5000) last_prune = 0;  // more to do: next round, in small batches
}

int store_catalog(const char *events_json, char *error, size_t error_size) {
    // In a transaction of its own, and an ERROR (a lock not got in time, what the table
    // refuses) is a failed sync: the worker goes on delivering.
    begin("bunce: storing the event catalog");
    MemoryContext cxt = CurrentMemoryContext;
    ResourceOwner owner = CurrentResourceOwner;
    int stored = -1;
    BeginInternalSubTransaction(nullptr);
    PG_TRY();
    {
        // Not behind someone else's long lock (an ALTER of bunce.events) for long.
        if (SPI_execute("SET LOCAL lock_timeout = '5s'", false, 0) != SPI_OK_UTILITY)
            elog(ERROR, "bunce worker: could not set lock_timeout");
        Oid types[1] = {TEXTOID};
        Datum args[1] = {CStringGetTextDatum(events_json)};
        const int rc = SPI_execute_with_args(
            "WITH new AS (SELECT * FROM pg_catalog.jsonb_to_recordset($1::pg_catalog.jsonb) "
            "             AS e(id pg_catalog.uuid, name pg_catalog.text, description pg_catalog.text, "
            "                  parameters pg_catalog.jsonb)), "
            "gone AS (DELETE FROM bunce.events e WHERE NOT EXISTS (SELECT FROM new WHERE new.id = e.id)) "
            "INSERT INTO bunce.events AS e (id, name, description, parameters, synced_at) "
            "SELECT id, name, description, parameters, pg_catalog.now() FROM new "
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name, description = excluded.description, "
            "parameters = excluded.parameters, synced_at = excluded.synced_at",
            1, types, args, nullptr, false, 0);
        if (rc != SPI_OK_INSERT) elog(ERROR, "bunce.events could not be written: %s", SPI_result_code_string(rc));
        stored = static_cast<int>(SPI_processed);
        ReleaseCurrentSubTransaction();
    }
    PG_CATCH();
    {
        MemoryContextSwitchTo(cxt);
        ErrorData *e = CopyErrorData();
        FlushErrorState();
        RollbackAndReleaseCurrentSubTransaction();
        snprintf(error, error_size, "storing the catalog failed: %s", e->message);
        FreeErrorData(e);
    }
    PG_END_TRY();
    MemoryContextSwitchTo(cxt);
    CurrentResourceOwner = owner;
    end();
    return stored;
}

}  // namespace bunce_pg
