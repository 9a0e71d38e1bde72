// The claim: five small statements, each prepared once and kept, and the choice of which new
// rows go out decided here, between them. (As one SQL statement, a plan of CTEs and window
// functions, it cost about 1 ms a call whatever it claimed.)
#include <cstdlib>
#include <initializer_list>

#include "claim.hpp"

extern "C" {
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"
#include "utils/tuplestore.h"
#include "utils/xid8.h"

PGDLLEXPORT Datum bunce_claim(PG_FUNCTION_ARGS);
PG_FUNCTION_INFO_V1(bunce_claim);
}

namespace bunce_pg {
namespace {

struct Statement {
    const char *name;  // in errors
    const char *sql;
    int nargs;
    Oid types[2];
    SPIPlanPtr plan;
};

// Scheduled rows that are due: retries, and events whose turn came. (A row in flight is not in
// the due index: the scan never walks over the requests in flight.)
Statement due_stmt{
    "claiming due events",
    "UPDATE bunce.outbox o SET sending_since = pg_catalog.statement_timestamp(), attempts = o.attempts + 1, "
    "       first_attempt_at = coalesce(o.first_attempt_at, pg_catalog.statement_timestamp()) "
    "FROM (SELECT c.id FROM bunce.outbox c "
    "      WHERE c.scheduled AND c.sending_since IS NULL AND c.next_attempt_at <= pg_catalog.statement_timestamp() "
    "      ORDER BY c.next_attempt_at, c.id LIMIT $1 FOR UPDATE SKIP LOCKED) due "
    "WHERE o.id = due.id "
    "RETURNING o.id, o.attempts, o.event_id, o.payload, o.idempotency_key, false",
    1,
    {INT4OID}};
// New rows, in id order through the primary key. (sending_since: a claim restored or written
// by hand, see release_claims.)
Statement scan_stmt{"finding new events",
                    "SELECT id, ordering_key FROM bunce.outbox "
                    "WHERE id >= $1 AND NOT scheduled AND sending_since IS NULL ORDER BY id LIMIT $2",
                    2,
                    {INT8OID, INT4OID}};
// The keys that have a scheduled row (one probe of the key index each).
Statement busy_stmt{"finding customers with events scheduled",
                    "SELECT u.k FROM pg_catalog.unnest($1::bigint[]) AS u(k) "
                    "WHERE (SELECT true FROM bunce.outbox s WHERE s.ordering_key = u.k AND s.scheduled LIMIT 1)",
                    1,
                    {INT8ARRAYOID}};
// The rows nobody else holds; a row locked by someone else is skipped.
Statement lock_stmt{"locking new events",
                    "SELECT id FROM bunce.outbox WHERE id = ANY ($1) AND NOT scheduled AND sending_since IS NULL "
                    "FOR UPDATE SKIP LOCKED",
                    1,
                    {INT8ARRAYOID}};
// Heads are claimed; the others are parked (next_attempt_at infinity) until their turn.
Statement place_stmt{
    "placing new events",
    "UPDATE bunce.outbox o SET scheduled = true, "
    "       sending_since = CASE WHEN u.head THEN pg_catalog.statement_timestamp() END, "
    "       attempts = o.attempts + CASE WHEN u.head THEN 1 ELSE 0 END, "
    "       next_attempt_at = CASE WHEN u.head THEN o.next_attempt_at ELSE 'infinity' END, "
    "       first_attempt_at = CASE WHEN u.head THEN coalesce(o.first_attempt_at, pg_catalog.statement_timestamp()) "
    "                          ELSE o.first_attempt_at END "
    "FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), pg_catalog.unnest($2::boolean[])) AS u(id, head) "
    "WHERE o.id = u.id "
    "RETURNING o.id, o.attempts, o.event_id, CASE WHEN u.head THEN o.payload END, o.idempotency_key, NOT u.head",
    2,
    {INT8ARRAYOID, BOOLARRAYOID}};

// Runs `s` (prepared on first use, under the caller's search_path: pg_catalog first), in
// `snap` when one is given.
void run(Statement &s, Datum *args, int expected, Snapshot snap = InvalidSnapshot) {
    if (!s.plan) {
        SPIPlanPtr plan = SPI_prepare(s.sql, s.nargs, s.types);
        if (!plan)
            elog(ERROR, "bunce: could not prepare the statement for %s: %s", s.name,
                 SPI_result_code_string(SPI_result));
        SPI_keepplan(plan);
        s.plan = plan;
    }
    const int rc = SPI_execute_snapshot(s.plan, args, nullptr, snap, InvalidSnapshot, false, false, 0);
    if (rc != expected) elog(ERROR, "bunce: %s failed: %s", s.name, SPI_result_code_string(rc));
}

// Hands the rows of a RETURNING (id, attempts, event_id, payload, idempotency_key, parked)
// to the sink; returns how many were not parked.
int hand_over(ClaimSink sink, void *arg) {
    int sent = 0;
    for (uint64 i = 0; i < SPI_processed; i++) {
        HeapTuple t = SPI_tuptable->vals[i];
        TupleDesc d = SPI_tuptable->tupdesc;
        bool isnull;
        ClaimedRow row;
        row.id = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
        row.attempts = DatumGetInt32(SPI_getbinval(t, d, 2, &isnull));
        row.event_id = SPI_getbinval(t, d, 3, &isnull);
        row.payload = SPI_getbinval(t, d, 4, &isnull);
        if (isnull) row.payload = 0;
        row.idempotency_key = SPI_getbinval(t, d, 5, &isnull);
        row.parked = DatumGetBool(SPI_getbinval(t, d, 6, &isnull));
        if (!row.parked) sent++;
        sink(row, arg);
    }
    return sent;
}

// A new row, and what the claim decided for it.
struct Fresh {
    int64 id;
    int64 key;
    bool keyed;   // has an ordering key
    bool first;   // first of its key in this batch
    bool busy;    // its key has a scheduled row
    bool locked;  // locked by this claim
    bool placed;
    bool head;
};

Fresh *rows_for_sort;  // (qsort has no argument)

// Rows with a key, by key and then id.
int by_key(const void *a, const void *b) {
    const Fresh &x = rows_for_sort[*static_cast<const int *>(a)], &y = rows_for_sort[*static_cast<const int *>(b)];
    if (x.key != y.key) return x.key < y.key ? -1 : 1;
    return x.id < y.id ? -1 : (x.id > y.id ? 1 : 0);
}

// The row with this id (rows are in id order), or nullptr.
Fresh *find_id(Fresh *rows, int n, int64 id) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        const int mid = (lo + hi) / 2;
        if (rows[mid].id == id) return &rows[mid];
        if (rows[mid].id < id)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return nullptr;
}

// The first row of this key in `by_key` order (n of them), or -1.
int find_key(const Fresh *rows, const int *order, int n, int64 key) {
    int lo = 0, hi = n - 1, found = -1;
    while (lo <= hi) {
        const int mid = (lo + hi) / 2;
        if (rows[order[mid]].key < key) {
            lo = mid + 1;
        } else {
            if (rows[order[mid]].key == key) found = mid;
            hi = mid - 1;
        }
    }
    return found;
}

Datum int8_array(const Datum *d, int n) {
    return PointerGetDatum(construct_array(const_cast<Datum *>(d), n, INT8OID, 8, true, TYPALIGN_DOUBLE));
}

int64 claim_rows(const ClaimRequest &req, ClaimSink sink, void *arg) {
    Datum due_args[] = {Int32GetDatum(req.max_events)};
    run(due_stmt, due_args, SPI_OK_UPDATE_RETURNING);
    const int cap = req.max_events - hand_over(sink, arg);

    // From the first id of each transaction that held ids and has ended, in the snapshot of
    // the scan: the scan then sees its rows.
    Snapshot snap = RegisterSnapshot(GetTransactionSnapshot());
    int64 from = req.after_id + 1;
    for (int i = 0; i < req.n_open; i++)
        if (transaction_ended(req.open_xids[i], snap)) from = Min(from, req.open_firsts[i]);
    if (cap <= 0) {
        UnregisterSnapshot(snap);
        return from - 1;
    }

    // Room for the heads wanted and some parked rows; a full scan leaves the rest for next time.
    const int scan = cap + 32;
    Datum scan_args[] = {Int64GetDatum(from), Int32GetDatum(scan)};
    run(scan_stmt, scan_args, SPI_OK_SELECT, snap);
    UnregisterSnapshot(snap);
    const int n = static_cast<int>(SPI_processed);
    if (n == 0) return PG_INT64_MAX;
    Fresh *rows = static_cast<Fresh *>(palloc0(sizeof(Fresh) * n));
    int *order = static_cast<int *>(palloc(sizeof(int) * n));  // keyed rows, by_key
    int nkeyed = 0;
    for (int i = 0; i < n; i++) {
        bool isnull;
        rows[i].id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
        const Datum k = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull);
        rows[i].keyed = !isnull;
        rows[i].key = isnull ? 0 : DatumGetInt64(k);
        if (rows[i].keyed) order[nkeyed++] = i;
    }
    SPI_freetuptable(SPI_tuptable);
    rows_for_sort = rows;
    qsort(order, nkeyed, sizeof(int), by_key);

    // A row is a head, sent now, when it is the first of its key here and nothing of its key
    // is scheduled (or when order does not matter). Else it is parked.
    if (req.ordered && nkeyed > 0) {
        Datum *keys = static_cast<Datum *>(palloc(sizeof(Datum) * nkeyed));
        int nkeys = 0;
        for (int j = 0; j < nkeyed; j++)
            if (j == 0 || rows[order[j]].key != rows[order[j - 1]].key) {
                rows[order[j]].first = true;
                keys[nkeys++] = Int64GetDatum(rows[order[j]].key);
            }
        Datum busy_args[] = {int8_array(keys, nkeys)};
        run(busy_stmt, busy_args, SPI_OK_SELECT);
        for (uint64 i = 0; i < SPI_processed; i++) {
            bool isnull;
            const int64 k = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
            const int j = find_key(rows, order, nkeyed, k);
            if (j >= 0) rows[order[j]].busy = true;
        }
        SPI_freetuptable(SPI_tuptable);
    }
    // Rows in id order while the heads fit: a row is never placed before an earlier row of
    // its key.
    int64 covered = n == scan ? rows[n - 1].id : PG_INT64_MAX;
    int chosen = 0, heads = 0;
    for (; chosen < n; chosen++) {
        Fresh &r = rows[chosen];
        r.head = !req.ordered || !r.keyed || (r.first && !r.busy);
        if (r.head && heads == cap) {
            covered = r.id - 1;
            break;
        }
        if (r.head) heads++;
    }

    Datum *ids = static_cast<Datum *>(palloc(sizeof(Datum) * chosen));
    for (int i = 0; i < chosen; i++) ids[i] = Int64GetDatum(rows[i].id);
    Datum lock_args[] = {int8_array(ids, chosen)};
    run(lock_stmt, lock_args, SPI_OK_SELECT);
    for (uint64 i = 0; i < SPI_processed; i++) {
        bool isnull;
        Fresh *r = find_id(rows, chosen,
                           DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull)));
        if (r) r->locked = r->placed = true;
    }
    SPI_freetuptable(SPI_tuptable);
    // A row someone else holds (or placed meanwhile) waits for the next claim, and so does
    // every other row of its key here: whoever holds it may be sending it.
    if (req.ordered) {
        for (int j = 0, group = 0; j <= nkeyed; j++) {
            if (j < nkeyed && rows[order[j]].key == rows[order[group]].key) continue;
            bool blocked = false;
            for (int g = group; g < j; g++) blocked |= order[g] < chosen && !rows[order[g]].locked;
            for (int g = group; blocked && g < j; g++) rows[order[g]].placed = false;
            group = j;
        }
    }
    for (int i = 0; i < chosen; i++)
        if (!rows[i].placed) {
            covered = Min(covered, rows[i].id - 1);
            break;
        }

    Datum *heads_d = static_cast<Datum *>(palloc(sizeof(Datum) * chosen));
    int nplaced = 0;
    for (int i = 0; i < chosen; i++)
        if (rows[i].placed) {
            ids[nplaced] = Int64GetDatum(rows[i].id);
            heads_d[nplaced++] = BoolGetDatum(rows[i].head);
        }
    if (nplaced > 0) {
        Datum place_args[] = {int8_array(ids, nplaced),
                              PointerGetDatum(construct_array(heads_d, nplaced, BOOLOID, 1, true, TYPALIGN_CHAR))};
        run(place_stmt, place_args, SPI_OK_UPDATE_RETURNING);
        hand_over(sink, arg);
    }
    return covered;
}

}  // namespace

bool transaction_ended(FullTransactionId xid, Snapshot snap) {
    const FullTransactionId next = ReadNextFullTransactionId();
    if (!FullTransactionIdPrecedes(xid, next)) return false;
    if (U64FromFullTransactionId(next) - U64FromFullTransactionId(xid) > MaxTransactionId / 2) return true;
    return !XidInMVCCSnapshot(XidFromFullTransactionId(xid), snap);
}

int64 claim(const ClaimRequest &req, ClaimSink sink, void *arg) {
    // The statements are kept as plans made when the outbox may have been nearly empty (or
    // full of rows of another kind), and they touch a few rows of a table of any size: only
    // index scans in index order and nested loops are right for them, whatever the statistics.
    const int nest = NewGUCNestLevel();
    for (const char *name :
         {"enable_seqscan", "enable_bitmapscan", "enable_sort", "enable_hashjoin", "enable_mergejoin"})
        (void)set_config_option(name, "off", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
    const int64 covered = claim_rows(req, sink, arg);
    AtEOXact_GUC(true, nest);
    return covered;
}

namespace {

struct Store {
    Tuplestorestate *store;
    TupleDesc desc;
};

void store_row(const ClaimedRow &row, void *arg) {
    auto *s = static_cast<Store *>(arg);
    Datum values[7] = {Int64GetDatum(row.id),
                       Int32GetDatum(row.attempts),
                       row.event_id,
                       row.payload,
                       row.idempotency_key,
                       BoolGetDatum(row.parked),
                       0};
    bool nulls[7] = {false, false, false, row.payload == 0, false, false, true};
    tuplestore_putvalues(s->store, s->desc, values, nulls);
}

constexpr int kMaxClaim = 100000;

// bunce.claim(max_events, after_id, ordered, open_xids, open_firsts): the claimed and parked
// rows, then one row with only `covered` (NULL: every new row seen was placed).
Datum claim_function(FunctionCallInfo fcinfo) {
    if (!superuser())
        ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("only a superuser may call bunce.claim()"),
                        errhint("The delivery worker claims events; a claim by anyone else holds them back.")));
    const int max_events = PG_GETARG_INT32(0);
    if (max_events < 0 || max_events > kMaxClaim)
        ereport(ERROR,
                (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("max_events must be between 0 and %d", kMaxClaim)));
    ReturnSetInfo *rsinfo = reinterpret_cast<ReturnSetInfo *>(fcinfo->resultinfo);
    InitMaterializedSRF(fcinfo, 0);
    ArrayType *xids = PG_GETARG_ARRAYTYPE_P(3), *firsts = PG_GETARG_ARRAYTYPE_P(4);
    Datum *xid_d, *first_d;
    int nxids, nfirsts;
    deconstruct_array(xids, XID8OID, 8, true, TYPALIGN_DOUBLE, &xid_d, nullptr, &nxids);
    deconstruct_array(firsts, INT8OID, 8, true, TYPALIGN_DOUBLE, &first_d, nullptr, &nfirsts);
    if (nxids != nfirsts)
        ereport(ERROR, (errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
                        errmsg("open_xids and open_firsts must have the same number of elements")));
    ClaimRequest req;
    req.max_events = max_events;
    req.after_id = PG_GETARG_INT64(1);
    req.ordered = PG_GETARG_BOOL(2);
    req.n_open = nxids;
    auto *open_xids = static_cast<FullTransactionId *>(palloc(sizeof(FullTransactionId) * Max(nxids, 1)));
    auto *open_firsts = static_cast<int64 *>(palloc(sizeof(int64) * Max(nxids, 1)));
    for (int i = 0; i < nxids; i++) {
        open_xids[i] = DatumGetFullTransactionId(xid_d[i]);
        open_firsts[i] = DatumGetInt64(first_d[i]);
    }
    req.open_xids = open_xids;
    req.open_firsts = open_firsts;
    Store s{rsinfo->setResult, rsinfo->setDesc};
    SPI_connect();
    const int64 covered = claim(req, store_row, &s);
    SPI_finish();
    Datum values[7] = {0, 0, 0, 0, 0, 0, Int64GetDatum(covered)};
    bool nulls[7] = {true, true, true, true, true, true, covered == PG_INT64_MAX};
    tuplestore_putvalues(s.store, s.desc, values, nulls);
    return static_cast<Datum>(0);
}

}  // namespace
}  // namespace bunce_pg

Datum bunce_claim(PG_FUNCTION_ARGS) { return bunce_pg::claim_function(fcinfo); }
