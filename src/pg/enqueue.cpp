// Everything that happens inside the user's transaction: bunce_trigger(event_id, payload),
// the generic trigger bunce_trigger(event_id [, mapping]), and the outbox insert they share.
// No network, no extra locks: one validation pass and one insert per event.
#include <cmath>
#include <cstring>

#include "guard.hpp"
#include "bunce_pg.hpp"
#include "mapping.hpp"
#include "payload.hpp"
#include "timestamp.hpp"

extern "C" {
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/sequence.h"
#include "common/pg_prng.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "optimizer/optimizer.h"
#include "parser/parse_func.h"
#include "tcop/utility.h"
#include "rewrite/rewriteHandler.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/uuid.h"

PGDLLEXPORT Datum bunce_trigger_enqueue(PG_FUNCTION_ARGS);
PGDLLEXPORT Datum bunce_trigger_row(PG_FUNCTION_ARGS);
PGDLLEXPORT Datum bunce_notify_enqueued(PG_FUNCTION_ARGS);
PG_FUNCTION_INFO_V1(bunce_trigger_enqueue);
PG_FUNCTION_INFO_V1(bunce_trigger_row);
PG_FUNCTION_INFO_V1(bunce_notify_enqueued);
}

namespace bunce_pg {

/* ---------------------------------------------------------------------------------------
 * Wake on commit. Each transaction counts what it enqueued (undoing what an aborted
 * subtransaction enqueued); at commit the count goes to shared memory and the worker's latch
 * is set, so delivery starts at once instead of at the next poll.
 */
namespace {

int64 xact_enqueued = 0;
int triggers_running = 0;  // bunce trigger calls under way in this backend (they can nest)
int64 *sub_saved = nullptr;  // xact_enqueued at the start of each open subtransaction
int sub_depth = 0;
int sub_capacity = 0;

void close_row_writer();
void forget_row_writer();

void xact_callback(XactEvent event, void *) {
    if (event == XACT_EVENT_PRE_COMMIT || event == XACT_EVENT_PRE_PREPARE) close_row_writer();
    if (event == XACT_EVENT_ABORT) forget_row_writer();
    if (event == XACT_EVENT_COMMIT && xact_enqueued > 0 && shared && MyDatabaseId == shared->database_id) {
        pg_atomic_fetch_add_u64(&shared->committed, static_cast<uint64>(xact_enqueued));
        wake_worker();
    }
    if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT || event == XACT_EVENT_PREPARE ||
        event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT) {
        xact_enqueued = 0;
        sub_depth = 0;
        triggers_running = 0;  // after an ERROR, calls that did not finish
    }
}

void subxact_callback(SubXactEvent event, SubTransactionId, SubTransactionId, void *) {
    if (event == SUBXACT_EVENT_START_SUB) {
        if (sub_depth == sub_capacity) {
            sub_capacity = sub_capacity ? sub_capacity * 2 : 16;
            sub_saved = static_cast<int64 *>(
                sub_saved ? repalloc(sub_saved, sizeof(int64) * sub_capacity)
                          : MemoryContextAlloc(TopMemoryContext, sizeof(int64) * sub_capacity));
        }
        sub_saved[sub_depth++] = xact_enqueued;
    } else if (event == SUBXACT_EVENT_COMMIT_SUB && sub_depth > 0) {
        sub_depth--;
    } else if (event == SUBXACT_EVENT_ABORT_SUB && sub_depth > 0) {
        xact_enqueued = sub_saved[--sub_depth];
    }
}

ProcessUtility_hook_type prev_process_utility = nullptr;

// (The row writer would otherwise make a TRUNCATE or DROP of the outbox later in the same
// transaction fail as "being used by active queries in this session".)
void check_create_trigger(CreateTrigStmt *stmt);
void warn_broken_mappings(Node *stmt);

// Before any utility command (TRUNCATE, DROP, ALTER, another COPY): let go of the row writer.
// A bunce trigger is checked when it is created, not when the business write first fires it;
// an ALTER TABLE that breaks a trigger's mapping says so.
void process_utility(PlannedStmt *pstmt, const char *query, bool read_only, ProcessUtilityContext context,
                     ParamListInfo params, QueryEnvironment *env, DestReceiver *dest, QueryCompletion *qc) {
    if (IsTransactionState()) close_row_writer();
    Node *stmt = pstmt->utilityStmt;
    if (IsA(stmt, CreateTrigStmt)) check_create_trigger(castNode(CreateTrigStmt, stmt));
    (prev_process_utility ? prev_process_utility : standard_ProcessUtility)(
        pstmt, query, read_only, context, params, env, dest, qc);
    if (IsA(stmt, RenameStmt) || IsA(stmt, AlterTableStmt)) warn_broken_mappings(stmt);
}

}  // namespace

void register_xact_callbacks() {
    RegisterXactCallback(xact_callback, nullptr);
    RegisterSubXactCallback(subxact_callback, nullptr);
    prev_process_utility = ProcessUtility_hook;
    ProcessUtility_hook = process_utility;
}

void note_enqueued() { xact_enqueued++; }

// Sets the worker's latch, once until its next claim: under a stream of commits a signal
// per commit would cost more than the insert itself.
void wake_worker() {
    if (pg_atomic_read_u32(&shared->work_signalled) || pg_atomic_exchange_u32(&shared->work_signalled, 1))
        return;
    SpinLockAcquire(&shared->mutex);
    Latch *latch = shared->worker_latch;
    SpinLockRelease(&shared->mutex);
    if (latch) SetLatch(latch);
}

namespace {

/* ---------------------------------------------------------------------------------------
 * The outbox insert. A direct heap insert with index maintenance, as COPY does: no SPI, no
 * plan, no per-call parsing. The caller's privileges are not checked on bunce.outbox: the
 * right to enqueue is EXECUTE on bunce_trigger.
 */
enum OutboxColumn {
    COL_ID, COL_EVENT_ID, COL_PAYLOAD, COL_IDEMPOTENCY_KEY, COL_ENQUEUED_AT, COL_NEXT_ATTEMPT_AT,
    COL_ATTEMPTS, COL_SENDING_SINCE, COL_FIRST_ATTEMPT_AT, COL_LAST_STATUS, COL_LAST_ERROR,
    COL_POSSIBLE_DUPLICATE, OUTBOX_NATTS
};
// The columns this code writes, found by name when the outbox is opened: a version of the
// table with more columns (an ALTER EXTENSION UPDATE while this backend runs older code) or
// with dropped ones still works. Columns not listed get their defaults.
struct OutboxColumnDef {
    const char *name;
    Oid type;
    bool required;  // written by every insert: the table must have it
};
const OutboxColumnDef outbox_columns[OUTBOX_NATTS] = {
    {"id", INT8OID, true},
    {"event_id", UUIDOID, true},
    {"payload", JSONBOID, true},
    {"idempotency_key", UUIDOID, true},
    {"enqueued_at", TIMESTAMPTZOID, true},
    {"next_attempt_at", TIMESTAMPTZOID, true},
    {"attempts", INT4OID, true},
    {"sending_since", TIMESTAMPTZOID, false},
    {"first_attempt_at", TIMESTAMPTZOID, false},
    {"last_status", INT4OID, false},
    {"last_error", TEXTOID, false},
    {"possible_duplicate", BOOLOID, true},
};

struct OutboxWriter {
    Relation rel;
    Oid seq;
    int column[OUTBOX_NATTS];  // index into the table's attributes, or -1 when absent
    int ndefaults;             // other columns, filled from their defaults:
    int *default_index;
    ExprState **default_expr;
    EState *estate;
    ResultRelInfo *rri;
    TupleTableSlot *slot;
    BulkInsertState bistate;  // bulk (statement-level) writes only, and then:
    TupleTableSlot **batch;   // rows waiting for one table_multi_insert, as COPY does
    int nbatch;
    MemoryContext cxt;        // the batch's slots live here, not in the caller's per-row memory
};
constexpr int OUTBOX_BATCH = 1000;

Oid bunce_namespace() {
    Oid nsp = get_namespace_oid("bunce", true);
    if (!OidIsValid(nsp))
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("extension \"bunce\" is not installed in this database"),
                        errhint("Run CREATE EXTENSION bunce.")));
    return nsp;
}

// The worker delivers the outbox of bunce.database only: an event enqueued in another database
// would wait there for ever. (Without shared_preload_libraries there is no worker at all, and
// bunce.status says so.)
void check_served_database() {
    static bool served = false;  // cannot change: bunce.database takes a restart
    if (served || !shared) return;
    const char *here = get_database_name(MyDatabaseId);
    if (here && strcmp(here, database) == 0) {
        served = true;
        return;
    }
    ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                    errmsg("bunce delivers the events of database \"%s\", not of \"%s\"", database,
                           here ? here : "?"),
                    errhint("Enqueue in database \"%s\", or set bunce.database = '%s' and restart the server.",
                            database, here ? here : "?")));
}

void check_writable(const char *what) {
    if (XactReadOnly || RecoveryInProgress())
        ereport(ERROR, (errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
                        errmsg("cannot enqueue a bunce event in a read-only transaction"),
                        errhint("%s must run where the business write runs: on the primary, in a "
                                "read-write transaction.", what)));
}

[[noreturn]] void outbox_mismatch(const char *detail) {
    ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                    errmsg("bunce.outbox does not have the columns this version of bunce expects"),
                    errdetail("%s", detail),
                    errhint("Run ALTER EXTENSION bunce UPDATE, and reconnect sessions that loaded an older bunce.")));
}

// Finds the columns by name in the table as it is now (the lock just taken has processed
// any pending invalidation, and holds off ALTER TABLE until this transaction ends).
void map_outbox_columns(OutboxWriter *w) {
    TupleDesc desc = RelationGetDescr(w->rel);
    for (int c = 0; c < OUTBOX_NATTS; c++) w->column[c] = -1;
    w->ndefaults = 0;
    w->default_index = static_cast<int *>(palloc(sizeof(int) * desc->natts));
    w->default_expr = static_cast<ExprState **>(palloc(sizeof(ExprState *) * desc->natts));
    for (int i = 0; i < desc->natts; i++) {
        Form_pg_attribute att = TupleDescAttr(desc, i);
        if (att->attisdropped) continue;
        int c = 0;
        while (c < OUTBOX_NATTS && strcmp(NameStr(att->attname), outbox_columns[c].name) != 0) c++;
        if (c < OUTBOX_NATTS) {
            if (att->atttypid != outbox_columns[c].type)
                outbox_mismatch(psprintf("Column \"%s\" has type %s, expected %s.", outbox_columns[c].name,
                                         format_type_be(att->atttypid), format_type_be(outbox_columns[c].type)));
            w->column[c] = i;
            continue;
        }
        if (att->attgenerated)
            outbox_mismatch(psprintf("Column \"%s\" is generated.", NameStr(att->attname)));
        if (Node *def = build_column_default(w->rel, i + 1)) {
            // Evaluated inside the writer: nothing that could run SQL or change state.
            if (contain_volatile_functions(def))
                outbox_mismatch(psprintf("Column \"%s\" has a volatile default.", NameStr(att->attname)));
            w->default_index[w->ndefaults] = i;
            w->default_expr[w->ndefaults] = ExecPrepareExpr(reinterpret_cast<Expr *>(def), w->estate);
            w->ndefaults++;
        } else if (att->attnotnull) {
            outbox_mismatch(psprintf("Column \"%s\" is NOT NULL without a default.", NameStr(att->attname)));
        }
    }
    for (int c = 0; c < OUTBOX_NATTS; c++)
        if (outbox_columns[c].required && w->column[c] < 0)
            outbox_mismatch(psprintf("Column \"%s\" is missing.", outbox_columns[c].name));
}

void outbox_open(OutboxWriter *w, bool bulk) {
    Oid nsp = bunce_namespace();
    Oid relid = get_relname_relid("outbox", nsp);
    w->seq = get_relname_relid("event_id_seq", nsp);
    if (!OidIsValid(relid) || !OidIsValid(w->seq))
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("bunce.outbox is missing"),
                        errhint("Reinstall the extension: DROP EXTENSION bunce; CREATE EXTENSION bunce.")));
    w->rel = table_open(relid, RowExclusiveLock);
    w->estate = CreateExecutorState();
    map_outbox_columns(w);
    w->rri = makeNode(ResultRelInfo);
    InitResultRelInfo(w->rri, w->rel, 1, nullptr, 0);
    ExecOpenIndices(w->rri, false);
    w->slot = MakeSingleTupleTableSlot(RelationGetDescr(w->rel), &TTSOpsVirtual);
    w->bistate = bulk ? GetBulkInsertState() : nullptr;
    w->batch = nullptr;
    w->nbatch = 0;
    w->cxt = CurrentMemoryContext;
    if (bulk) {
        // slots made as needed: most statements change a few rows
        w->batch = static_cast<TupleTableSlot **>(palloc0(sizeof(TupleTableSlot *) * OUTBOX_BATCH));
    }
}

void outbox_flush(OutboxWriter *w) {
    if (w->nbatch == 0) return;
    table_multi_insert(w->rel, w->batch, w->nbatch, GetCurrentCommandId(true), 0, w->bistate);
    for (int i = 0; i < w->nbatch; i++) {
        ExecInsertIndexTuples(w->rri, w->batch[i], w->estate, false, false, nullptr, NIL);
        ExecClearTuple(w->batch[i]);
    }
    ResetPerTupleExprContext(w->estate);
    w->nbatch = 0;
}

// An idempotency key: a version 4 UUID from a generator of this backend, seeded once from
// pg_strong_random. It must be unique, not secret (it is sent along with the event), and
// OpenSSL's generator behind gen_random_uuid() costs more than the rest of an enqueue.
Datum random_uuid() {
    static pg_prng_state state;
    static int seeded_pid = 0;
    if (seeded_pid != MyProcPid) {  // once per process, never state inherited through fork
        if (!pg_prng_strong_seed(&state))
            ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("could not generate random values")));
        seeded_pid = MyProcPid;
    }
    auto *u = static_cast<pg_uuid_t *>(palloc(sizeof(pg_uuid_t)));
    const uint64 hi = pg_prng_uint64(&state), lo = pg_prng_uint64(&state);
    memcpy(u->data, &hi, 8);
    memcpy(u->data + 8, &lo, 8);
    u->data[6] = (u->data[6] & 0x0f) | 0x40;  // version 4
    u->data[8] = (u->data[8] & 0x3f) | 0x80;  // RFC 4122 variant
    return UUIDPGetDatum(u);
}

int64 outbox_insert(OutboxWriter *w, Datum event_id, Datum payload) {
    TupleTableSlot *slot = w->slot;
    if (w->batch) {
        if (!w->batch[w->nbatch]) {
            MemoryContext old = MemoryContextSwitchTo(w->cxt);
            w->batch[w->nbatch] = table_slot_create(w->rel, nullptr);
            MemoryContextSwitchTo(old);
        }
        slot = w->batch[w->nbatch];
    }
    ExecClearTuple(slot);
    const int64 id = nextval_internal(w->seq, false);
    const TimestampTz now = GetCurrentTransactionStartTimestamp();
    Datum *v = slot->tts_values;
    bool *n = slot->tts_isnull;
    for (int i = 0; i < slot->tts_tupleDescriptor->natts; i++) n[i] = true;
    for (int d = 0; d < w->ndefaults; d++) {
        const int i = w->default_index[d];
        v[i] = ExecEvalExprSwitchContext(w->default_expr[d], GetPerTupleExprContext(w->estate), &n[i]);
    }
    auto set = [&](int c, Datum d) {
        v[w->column[c]] = d;
        n[w->column[c]] = false;
    };
    set(COL_ID, Int64GetDatum(id));
    set(COL_EVENT_ID, event_id);
    set(COL_PAYLOAD, payload);
    set(COL_IDEMPOTENCY_KEY, random_uuid());
    set(COL_ENQUEUED_AT, TimestampTzGetDatum(now));
    set(COL_NEXT_ATTEMPT_AT, TimestampTzGetDatum(now));
    set(COL_ATTEMPTS, Int32GetDatum(0));
    set(COL_POSSIBLE_DUPLICATE, BoolGetDatum(false));
    ExecStoreVirtualTuple(slot);
    if (w->batch) {
        ExecMaterializeSlot(slot);  // its values live in the caller's per-row memory
        if (++w->nbatch == OUTBOX_BATCH) outbox_flush(w);
    } else {
        table_tuple_insert(w->rel, slot, GetCurrentCommandId(true), 0, nullptr);
        ExecInsertIndexTuples(w->rri, slot, w->estate, false, false, nullptr, NIL);
        ResetPerTupleExprContext(w->estate);
    }
    note_enqueued();
    return id;
}

void outbox_close(OutboxWriter *w) {
    if (w->batch) {
        outbox_flush(w);
        for (int i = 0; i < OUTBOX_BATCH && w->batch[i]; i++) ExecDropSingleTupleTableSlot(w->batch[i]);
    }
    if (w->bistate) FreeBulkInsertState(w->bistate);
    ExecDropSingleTupleTableSlot(w->slot);
    ExecCloseIndices(w->rri);
    FreeExecutorState(w->estate);
    table_close(w->rel, NoLock);
}

// The writer for single rows, kept open for the rest of the command: a COPY or a multi-row
// INSERT fires the row trigger once per row, and opening the outbox and its indexes each time
// cost about as much as the insert. It lives in TopTransactionContext and its relations are
// held by TopTransactionResourceOwner (the portal's may end first). It is closed before
// commit, and replaced when the command counter moves on, so that it never misses a change
// to the table made by an earlier command of the transaction. After an ERROR the transaction
// abort releases it and restores CurrentResourceOwner.
OutboxWriter *row_writer = nullptr;
CommandId row_writer_cid = InvalidCommandId;

void close_row_writer() {
    if (!row_writer) return;
    ResourceOwner save = CurrentResourceOwner;
    CurrentResourceOwner = TopTransactionResourceOwner;
    outbox_close(row_writer);
    CurrentResourceOwner = save;
    pfree(row_writer);
    row_writer = nullptr;
}

void forget_row_writer() { row_writer = nullptr; }

OutboxWriter *single_row_writer() {
    const CommandId cid = GetCurrentCommandId(false);
    if (row_writer && row_writer_cid == cid) return row_writer;
    close_row_writer();
    MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
    ResourceOwner save = CurrentResourceOwner;
    CurrentResourceOwner = TopTransactionResourceOwner;
    auto *w = static_cast<OutboxWriter *>(palloc(sizeof(OutboxWriter)));
    outbox_open(w, false);
    CurrentResourceOwner = save;
    MemoryContextSwitchTo(old);
    row_writer = w;
    row_writer_cid = cid;
    return w;
}

/* ---------------------------------------------------------------------------------------
 * Validation, and bunce.on_invalid.
 */

// bunce.max_payload_size bounds a payload's JSON text as the worker sends it (jsonb's text
// form), so that the worker's memory is bounded by bunce.max_in_flight payloads.
bool within_size_limit(size_t size, CoreError &err) {
    if (size <= static_cast<size_t>(max_payload_size)) return true;
    err.failed = true;
    err.sqlstate = ERRCODE_PROGRAM_LIMIT_EXCEEDED;
    snprintf(err.message, sizeof err.message, "payload is %zu bytes, more than bunce.max_payload_size (%d bytes)",
             size, max_payload_size);
    strlcpy(err.hint, "Send less data with the event, or raise bunce.max_payload_size in the server configuration.",
            sizeof err.hint);
    return false;
}

// Validates and normalises payload JSON text. Returns the jsonb to store, or (Datum) 0 with
// err filled in. `original` is the caller's jsonb, reused when nothing changed; then `text`
// is its text form, and one too large is refused before it is parsed (normalising adds at
// most the quotes of an integer customer_id).
Datum prepare(const char *text, Datum original, CoreError &err) {
    const size_t size = strlen(text);
    if (original != static_cast<Datum>(0) && size > static_cast<size_t>(max_payload_size) + 2 &&
        !within_size_limit(size, err))
        return static_cast<Datum>(0);
    // The core reads UTF-8, as Bunce does; the database may hold another encoding.
    const bool convert = GetDatabaseEncoding() != PG_UTF8;
    const char *utf8 = convert ? pg_server_to_any(text, static_cast<int>(size), PG_UTF8) : text;
    bool changed = false;
    char *normalised = nullptr;
    size_t normalised_size = 0;
    if (!guarded(err, [&] {
            bunce::PreparedPayload p = bunce::prepare_payload(utf8);
            changed = p.changed;
            if (changed) normalised = pstrdup_nothrow(p.json.data(), p.json.size());
            normalised_size = p.json.size();
        }))
        return static_cast<Datum>(0);
    if (original != static_cast<Datum>(0)) {
        // Measured as sent: in UTF-8.
        if (!within_size_limit(changed ? normalised_size : strlen(utf8), err)) return static_cast<Datum>(0);
        if (!changed) return original;
    }
    if (changed && convert) normalised = pg_any_to_server(normalised, static_cast<int>(normalised_size), PG_UTF8);
    return DirectFunctionCall1(jsonb_in, CStringGetDatum(changed ? normalised : text));
}

// A refused event: an ERROR, or with bunce.on_invalid = dead_letter a row in
// bunce.dead_letters and a WARNING, so the business write goes through. Returns the id.
int64 refuse(const CoreError &err, const char *context, Datum event_id, bool event_null,
             const char *payload_text) {
    if (on_invalid == ON_INVALID_ERROR) raise(err, context);

    // Written as the owner of bunce.dead_letters: the caller needs no privilege on schema
    // bunce (the right to enqueue is EXECUTE on bunce_trigger, or being able to fire the
    // trigger). Everything in the statement is schema-qualified, and it runs with a pinned
    // search_path.
    Oid dead_relid = get_relname_relid("dead_letters", bunce_namespace());
    if (!OidIsValid(dead_relid))
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("bunce.dead_letters is missing"),
                        errhint("Reinstall the extension: DROP EXTENSION bunce; CREATE EXTENSION bunce.")));
    Relation dead_rel = table_open(dead_relid, AccessShareLock);
    const Oid dead_owner = dead_rel->rd_rel->relowner;
    table_close(dead_rel, NoLock);
    const char *sql =
        "INSERT INTO bunce.dead_letters (id, event_id, payload, idempotency_key, reason, message, "
        "attempts, enqueued_at) VALUES (pg_catalog.nextval('bunce.event_id_seq'::pg_catalog.regclass), "
        "$1, $2, pg_catalog.gen_random_uuid(), 'invalid', $3, 0, pg_catalog.now()) RETURNING id";
    Oid types[3] = {UUIDOID, JSONBOID, TEXTOID};
    Datum values[3];
    char nulls[3] = {' ', ' ', ' '};
    values[0] = event_id;
    if (event_null) nulls[0] = 'n';
    // Keep what was given, even when it is not JSON, so nothing is lost.
    if (!payload_text) {
        nulls[1] = 'n';
    } else if (err.sqlstate == ERRCODE_INVALID_TEXT_REPRESENTATION) {
        StringInfoData wrapped;  // {"unparsed": "<the text, as a JSON string>"}
        initStringInfo(&wrapped);
        appendStringInfoString(&wrapped, "{\"unparsed\": ");
        escape_json(&wrapped, payload_text);
        appendStringInfoChar(&wrapped, '}');
        values[1] = DirectFunctionCall1(jsonb_in, CStringGetDatum(wrapped.data));
    } else {
        values[1] = DirectFunctionCall1(jsonb_in, CStringGetDatum(payload_text));
    }
    StringInfoData message;
    initStringInfo(&message);
    if (context) appendStringInfo(&message, "%s: ", context);
    appendStringInfoString(&message, err.message);
    values[2] = CStringGetTextDatum(message.data);

    Oid save_userid;
    int save_sec_context;
    GetUserIdAndSecContext(&save_userid, &save_sec_context);
    // An ERROR in between is fine: transaction abort restores the user id.
    SetUserIdAndSecContext(dead_owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
                                           SECURITY_RESTRICTED_OPERATION);
    // Not the caller's search_path: nothing the caller planted may run as the table owner.
    const int save_nestlevel = NewGUCNestLevel();
    (void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
                             GUC_ACTION_SAVE, true, 0, false);
    SPI_connect();
    if (SPI_execute_with_args(sql, 3, types, values, nulls, false, 1) != SPI_OK_INSERT_RETURNING)
        elog(ERROR, "could not insert into bunce.dead_letters");
    bool isnull;
    int64 id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
    SPI_finish();
    AtEOXact_GUC(true, save_nestlevel);
    SetUserIdAndSecContext(save_userid, save_sec_context);
    ereport(WARNING, (errcode(err.sqlstate), errmsg("bunce event refused and kept as dead letter %lld",
                                                    static_cast<long long>(id)),
                      errdetail("%s", message.data),
                      errhint("See bunce.dead_letters; bunce.on_invalid = dead_letter is in effect.")));
    return id;
}

}  // namespace
}  // namespace bunce_pg

using namespace bunce_pg;

Datum bunce_trigger_enqueue(PG_FUNCTION_ARGS) {
    check_writable("bunce_trigger()");
    check_served_database();
    if (PG_ARGISNULL(0) || PG_ARGISNULL(1)) {
        CoreError err;
        err.sqlstate = ERRCODE_NULL_VALUE_NOT_ALLOWED;
        strlcpy(err.message, PG_ARGISNULL(0) ? "event_id must not be NULL" : "payload must not be NULL",
                sizeof err.message);
        strlcpy(err.hint, PG_ARGISNULL(0)
                              ? "Pass the UUID of an event created in Bunce."
                              : "Pass a jsonb object with \"email\" or \"customer\".",
                sizeof err.hint);
        char *text = PG_ARGISNULL(1) ? nullptr
                                     : JsonbToCString(nullptr, &PG_GETARG_JSONB_P(1)->root, -1);
        PG_RETURN_INT64(refuse(err, nullptr, PG_ARGISNULL(0) ? 0 : PG_GETARG_DATUM(0),
                               PG_ARGISNULL(0), text));
    }
    Datum event_id = PG_GETARG_DATUM(0);
    Jsonb *jb = PG_GETARG_JSONB_P(1);
    char *text = JsonbToCString(nullptr, &jb->root, VARSIZE(jb));
    CoreError err;
    Datum payload = prepare(text, PointerGetDatum(jb), err);
    if (err.failed) PG_RETURN_INT64(refuse(err, nullptr, event_id, false, text));

    PG_RETURN_INT64(outbox_insert(single_row_writer(), event_id, payload));
}

// Lets SQL code that moves events into the outbox (bunce.retry_dead_letters) count them
// and wake the worker at commit, like bunce_trigger does.
Datum bunce_notify_enqueued(PG_FUNCTION_ARGS) {
    // Called by bunce's own SECURITY DEFINER functions; anyone else could skew the counters.
    if (!superuser())
        ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                        errmsg("permission denied for function bunce.notify_enqueued"),
                        errhint("It is called by bunce.retry_dead_letters(); call that instead.")));
    xact_enqueued += PG_GETARG_INT64(0);
    PG_RETURN_VOID();
}

/* ---------------------------------------------------------------------------------------
 * The generic trigger. Its arguments are parsed and its columns looked up once per trigger
 * and backend, kept until the table's relcache entry is invalidated (ALTER TABLE, CREATE OR
 * REPLACE TRIGGER, ...).
 */
namespace {

enum ValueKind { KIND_TEXT, KIND_BOOL, KIND_INT, KIND_NUMBER, KIND_TIMESTAMPTZ, KIND_TIMESTAMP,
                 KIND_DATE, KIND_JSON, KIND_JSONB };

struct Column {
    AttrNumber attnum;
    char *name;
    ValueKind kind;
    FmgrInfo output;
};

// What an item is to Bunce's payload rules.
enum Role { ROLE_NONE, ROLE_EMAIL, ROLE_CUSTOMER, ROLE_CUSTOMER_ID, ROLE_CUSTOMER_EMAIL };

// One item of the payload layout: a column under a key, or the start/end of a nested object.
struct LayoutItem {
    bunce::MappingItem::Kind kind;
    char *key;
    int column;  // index into TriggerSetup.columns (fields only)
    Role role;
    bool identity;  // in the customer object, or the top-level email: text is never rewritten
};

struct TriggerSetup {
    Oid trigger;  // hash key
    Oid relid;
    bool valid;
    MemoryContext cxt;
    pg_uuid_t event_id;
    // The payload's shape is known from the column types: the rules need checking only on
    // the values of the email and customer fields, not by parsing the JSON of every row.
    bool typed_check;
    int nitems;
    LayoutItem *items;
    Column *columns;
};

HTAB *setups = nullptr;
bool setups_invalidated = false;

void invalidate_setups(Datum, Oid relid) {
    if (!setups) return;
    HASH_SEQ_STATUS it;
    hash_seq_init(&it, setups);
    while (auto *s = static_cast<TriggerSetup *>(hash_seq_search(&it))) {
        if (relid == InvalidOid || s->relid == relid) {
            s->valid = false;
            setups_invalidated = true;
        }
    }
}

// Frees the setups invalidated since (those of dropped triggers would otherwise stay for the
// life of the session). Only when no bunce trigger is running in this backend: one may be
// using its setup while a user type's output function fires another.
void sweep_setups() {
    if (!setups_invalidated || triggers_running > 0) return;
    setups_invalidated = false;
    HASH_SEQ_STATUS it;
    hash_seq_init(&it, setups);
    while (auto *s = static_cast<TriggerSetup *>(hash_seq_search(&it))) {
        if (s->valid) continue;
        MemoryContextDelete(s->cxt);
        hash_search(setups, &s->trigger, HASH_REMOVE, nullptr);
    }
}

// What uuid_in accepts (checked first: uuid_in's own error would quote the argument and end
// the statement without the trigger's name): 32 hex digits, a hyphen allowed after any group
// of four, optionally in braces.
bool looks_like_uuid(const char *s) {
    size_t len = strlen(s);
    if (len >= 2 && s[0] == '{' && s[len - 1] == '}') {
        s++;
        len -= 2;
    }
    int digits = 0;
    for (size_t i = 0; i < len; i++) {
        if (isxdigit(static_cast<unsigned char>(s[i]))) {
            digits++;
        } else if (s[i] != '-' || digits == 0 || digits % 4 != 0 || digits == 32 || s[i - 1] == '-') {
            return false;
        }
    }
    return digits == 32 && s[len - 1] != '-';
}

ValueKind kind_of(Oid type) {
    switch (getBaseType(type)) {
        case BOOLOID: return KIND_BOOL;
        case INT2OID: case INT4OID: case INT8OID: case OIDOID: return KIND_INT;
        case FLOAT4OID: case FLOAT8OID: case NUMERICOID: return KIND_NUMBER;
        case TIMESTAMPTZOID: return KIND_TIMESTAMPTZ;
        case TIMESTAMPOID: return KIND_TIMESTAMP;
        case DATEOID: return KIND_DATE;
        case JSONOID: return KIND_JSON;
        case JSONBOID: return KIND_JSONB;
        default: return KIND_TEXT;
    }
}

void add_column(TriggerSetup *s, Relation rel, AttrNumber attnum, int index) {
    Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
    Column *c = &s->columns[index];
    c->attnum = attnum;
    c->name = MemoryContextStrdup(s->cxt, NameStr(att->attname));
    c->kind = kind_of(att->atttypid);
    Oid out;
    bool varlena;
    getTypeOutputInfo(att->atttypid, &out, &varlena);
    fmgr_info_cxt(out, &c->output, s->cxt);
}

// Marks the items Bunce's rules are about, and decides whether their column types alone
// guarantee the payload's shape (text emails, a mapped customer object, no JSON columns
// that could hold anything). Otherwise every row's JSON goes through the full check.
void assign_roles(TriggerSetup *s) {
    bool typed = true;
    int depth = 0;
    bool in_customer = false;
    for (int i = 0; i < s->nitems; i++) {
        LayoutItem *item = &s->items[i];
        item->role = ROLE_NONE;
        item->identity = in_customer;
        if (item->kind == bunce::MappingItem::end_object) {
            if (--depth == 0) in_customer = false;
            continue;
        }
        const bool top = depth == 0;
        if (item->kind == bunce::MappingItem::begin_object) {
            if (top && strcmp(item->key, "customer") == 0) {
                item->role = ROLE_CUSTOMER;
                item->identity = in_customer = true;
            } else if (in_customer) {
                typed = false;  // an object inside customer (devices, a name...): check its shape
            }
            depth++;
            continue;
        }
        const ValueKind kind = s->columns[item->column].kind;
        if (kind == KIND_JSON || kind == KIND_JSONB) typed = false;
        if (top && strcmp(item->key, "email") == 0) {
            item->role = ROLE_EMAIL;
            item->identity = true;
            typed &= kind == KIND_TEXT;
        } else if (top && strcmp(item->key, "customer") == 0) {
            typed = false;  // a column as the whole customer: check what it holds
        } else if (in_customer && depth == 1) {
            if (strcmp(item->key, "customer_id") == 0) {
                item->role = ROLE_CUSTOMER_ID;
                typed &= kind == KIND_TEXT || kind == KIND_INT;
            } else if (strcmp(item->key, "email") == 0) {
                item->role = ROLE_CUSTOMER_EMAIL;
                typed &= kind == KIND_TEXT;
            } else if (strcmp(item->key, "first_name") == 0 || strcmp(item->key, "last_name") == 0 ||
                       strcmp(item->key, "phone_no") == 0) {
                typed &= kind == KIND_TEXT;
            } else if (strcmp(item->key, "devices") == 0) {
                typed = false;
            }
        }
    }
    // The typed check reads emails and ids as UTF-8: in another encoding, the full check runs
    // on the payload converted.
    s->typed_check = typed && GetDatabaseEncoding() == PG_UTF8;
}

void build_setup(TriggerSetup *s, const char *tgname, int nargs, char **args, Relation rel);

// A trigger's mapping as arrays in the current memory context: the layout items (kind and
// key) and each item's column name (fields only). False, with err filled in, when the
// mapping cannot be used.
bool parse_mapping_layout(const char *mapping, LayoutItem **items, char ***columns, int *n, CoreError &err) {
    *n = 0;
    return guarded(err, [&] {
        std::vector<bunce::MappingItem> parsed = bunce::parse_mapping(mapping);
        *items = static_cast<LayoutItem *>(palloc_extended(sizeof(LayoutItem) * parsed.size(), MCXT_ALLOC_NO_OOM));
        *columns = static_cast<char **>(palloc_extended(sizeof(char *) * parsed.size(), MCXT_ALLOC_NO_OOM));
        if (!*items || !*columns) throw std::bad_alloc();
        for (const auto &p : parsed) {
            (*items)[*n] = {p.kind, pstrdup_nothrow(p.key.data(), p.key.size()), -1, ROLE_NONE};
            (*columns)[*n] = pstrdup_nothrow(p.column.data(), p.column.size());
            (*n)++;
        }
    });
}

TriggerSetup *trigger_setup(TriggerData *td) {
    Trigger *tg = td->tg_trigger;
    Relation rel = td->tg_relation;
    if (!setups) {
        HASHCTL ctl;
        memset(&ctl, 0, sizeof ctl);
        ctl.keysize = sizeof(Oid);
        ctl.entrysize = sizeof(TriggerSetup);
        setups = hash_create("bunce trigger setups", 16, &ctl, HASH_ELEM | HASH_BLOBS);
        CacheRegisterRelcacheCallback(invalidate_setups, 0);
    }
    sweep_setups();
    bool found;
    auto *s = static_cast<TriggerSetup *>(hash_search(setups, &tg->tgoid, HASH_ENTER, &found));
    if (found && s->valid) return s;
    // Invalid: one whose building failed, or one sweep_setups() left because a call further up
    // may still use it (then its memory is left be).
    if (found && triggers_running == 0) MemoryContextDelete(s->cxt);
    s->valid = false;
    s->cxt = AllocSetContextCreate(CacheMemoryContext, "bunce trigger setup", ALLOCSET_SMALL_SIZES);
    build_setup(s, tg->tgname, tg->tgnargs, tg->tgargs, rel);
    s->valid = true;
    return s;
}

// Parses a trigger's arguments and looks up its columns into s (whose cxt is set); an ERROR
// naming the trigger and the table for anything wrong. Used when the trigger fires and when
// it is created.
void build_setup(TriggerSetup *s, const char *tgname, int nargs, char **args, Relation rel) {
    s->relid = RelationGetRelid(rel);
    s->nitems = 0;
    const char *table = RelationGetRelationName(rel);
    if (nargs < 1 || nargs > 2)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("trigger \"%s\" on table \"%s\": bunce_trigger() takes an event id and an optional mapping, got %d arguments",
                               tgname, table, nargs),
                        errhint("EXECUTE FUNCTION bunce_trigger('<event uuid>', '{\"email\": \"email_column\"}')")));
    if (!looks_like_uuid(args[0]))
        ereport(ERROR, (errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
                        errmsg("trigger \"%s\" on table \"%s\": event id \"%s\" is not a valid UUID",
                               tgname, table, args[0]),
                        errhint("The first argument is the id of an event created in Bunce.")));
    memcpy(&s->event_id, DatumGetUUIDP(DirectFunctionCall1(uuid_in, CStringGetDatum(args[0]))),
           sizeof(pg_uuid_t));

    MemoryContext old = MemoryContextSwitchTo(s->cxt);
    TupleDesc desc = RelationGetDescr(rel);
    if (nargs == 1) {
        // No mapping: every column under its own name.
        int ncols = 0;
        for (int i = 0; i < desc->natts; i++) ncols += !TupleDescAttr(desc, i)->attisdropped;
        s->items = static_cast<LayoutItem *>(palloc(sizeof(LayoutItem) * ncols));
        s->columns = static_cast<Column *>(palloc(sizeof(Column) * ncols));
        for (int i = 0; i < desc->natts; i++) {
            Form_pg_attribute att = TupleDescAttr(desc, i);
            if (att->attisdropped) continue;
            s->items[s->nitems] = {bunce::MappingItem::field, pstrdup(NameStr(att->attname)), s->nitems, ROLE_NONE};
            add_column(s, rel, att->attnum, s->nitems);
            s->nitems++;
        }
    } else {
        CoreError err;
        int nitems = 0;
        LayoutItem *items = nullptr;
        char **columns = nullptr;
        const bool parsed = parse_mapping_layout(args[1], &items, &columns, &nitems, err);
        MemoryContextSwitchTo(old);
        if (!parsed) raise(err, psprintf("trigger \"%s\" on table \"%s\"", tgname, table));
        MemoryContextSwitchTo(s->cxt);
        s->items = items;
        s->columns = static_cast<Column *>(palloc(sizeof(Column) * nitems));
        int ncols = 0;
        for (int i = 0; i < nitems; i++) {
            if (items[i].kind != bunce::MappingItem::field) continue;
            AttrNumber attnum = InvalidAttrNumber;
            for (int a = 0; a < desc->natts; a++) {
                Form_pg_attribute att = TupleDescAttr(desc, a);
                if (!att->attisdropped && strcmp(NameStr(att->attname), columns[i]) == 0)
                    attnum = att->attnum;
            }
            if (attnum == InvalidAttrNumber) {
                MemoryContextSwitchTo(old);
                ereport(ERROR, (errcode(ERRCODE_UNDEFINED_COLUMN),
                                errmsg("trigger \"%s\" on table \"%s\": mapping key \"%s\" names column \"%s\", which does not exist",
                                       tgname, table, items[i].key, columns[i]),
                                errhint("Map payload keys to columns of \"%s\"; names are case-sensitive.", table)));
            }
            add_column(s, rel, attnum, ncols);
            items[i].column = ncols++;
        }
        s->nitems = nitems;
    }
    MemoryContextSwitchTo(old);
    assign_roles(s);
}

// Why a column's value cannot be sent as it is (a static string), or nullptr. The value is
// still written, in PostgreSQL's text form, so that a dead letter keeps it.
using Problem = const char *;
constexpr Problem kOutOfRange =
    "holds a date-time that Bunce's form YYYY-MM-DDTHH:MM:SSZ cannot express (a year outside 0001 to 9999, or infinity)";
constexpr Problem kTooLarge = "holds a number too large for Bunce (beyond double precision)";

// Appends a timestamp (microseconds since 2000-01-01 UTC) in Bunce's form, truncating
// fractional seconds.
Problem append_utc(StringInfo buf, TimestampTz ts, Column *c, Datum d) {
    struct pg_tm tm;
    fsec_t fsec;
    if (TIMESTAMP_NOT_FINITE(ts) || timestamp2tm(ts, nullptr, &tm, &fsec, nullptr, nullptr) != 0 ||
        tm.tm_year < 1 || tm.tm_year > 9999) {
        escape_json(buf, OutputFunctionCall(&c->output, d));
        return kOutOfRange;
    }
    appendStringInfo(buf, "\"%04d-%02d-%02dT%02d:%02d:%02dZ\"", tm.tm_year, tm.tm_mon, tm.tm_mday,
                     tm.tm_hour, tm.tm_min, tm.tm_sec);
    return nullptr;
}

// A date: midnight UTC of that day, so that it stays the same date in Bunce. Its year is
// read from the day number, which a multiplication into microseconds could overflow.
Problem append_date(StringInfo buf, DateADT date, Column *c, Datum d) {
    int year = 0, month, day;
    if (!DATE_NOT_FINITE(date)) j2date(date + POSTGRES_EPOCH_JDATE, &year, &month, &day);
    if (year < 1 || year > 9999) {
        escape_json(buf, OutputFunctionCall(&c->output, d));
        return kOutOfRange;
    }
    appendStringInfo(buf, "\"%04d-%02d-%02dT00:00:00Z\"", year, month, day);
    return nullptr;
}

// Text that is a date-time with an offset is normalised like any payload string.
Problem append_text(StringInfo buf, const char *text) {
    bunce::TimestampText ts;
    CoreError err;
    if (guarded(err, [&] { ts = bunce::classify_timestamp(text); }) &&
        ts.kind == bunce::TimestampText::date_time) {
        escape_json(buf, ts.utc.c_str());
        return nullptr;
    }
    escape_json(buf, text);
    return ts.kind == bunce::TimestampText::out_of_range ? kOutOfRange : nullptr;
}

// Appends a column's value. *text is set to its text when the item has a role.
Problem append_value(StringInfo buf, Column *c, Datum d, const LayoutItem *item, const char **text) {
    if (item->role != ROLE_NONE && (c->kind == KIND_TEXT || c->kind == KIND_INT)) {
        // Emails and ids are strings to Bunce (an integer customer_id becomes one).
        *text = OutputFunctionCall(&c->output, d);
        escape_json(buf, *text);
        return nullptr;
    }
    switch (c->kind) {
        case KIND_BOOL:
            appendStringInfoString(buf, DatumGetBool(d) ? "true" : "false");
            break;
        case KIND_INT:
            appendStringInfoString(buf, OutputFunctionCall(&c->output, d));
            break;
        case KIND_NUMBER: {
            char *s = OutputFunctionCall(&c->output, d);
            // NaN and infinities have no JSON number form.
            if (!isdigit(static_cast<unsigned char>(s[s[0] == '-']))) {
                escape_json(buf, s);
                break;
            }
            appendStringInfoString(buf, s);
            // numeric goes far beyond double precision, which is what Bunce reads
            if (strlen(s) > 300 && std::isinf(strtod(s, nullptr))) return kTooLarge;
            break;
        }
        case KIND_TIMESTAMPTZ:
            return append_utc(buf, DatumGetTimestampTz(d), c, d);
        case KIND_TIMESTAMP: {
            // As PostgreSQL's own cast to timestamptz: the value is local time in TimeZone.
            int overflow = 0;
            const TimestampTz ts = timestamp2timestamptz_opt_overflow(DatumGetTimestamp(d), &overflow);
            return append_utc(buf, overflow ? DT_NOEND : ts, c, d);
        }
        case KIND_DATE:
            return append_date(buf, DatumGetDateADT(d), c, d);
        case KIND_JSON:
            appendStringInfoString(buf, OutputFunctionCall(&c->output, d));
            break;
        case KIND_JSONB: {
            Jsonb *jb = DatumGetJsonbP(d);
            JsonbToCString(buf, &jb->root, VARSIZE(jb));
            break;
        }
        case KIND_TEXT: {
            const char *value = OutputFunctionCall(&c->output, d);
            if (item->identity) {
                escape_json(buf, value);
                break;
            }
            return append_text(buf, value);
        }
    }
    return nullptr;
}

// The payload of one row as JSON text; NULL columns are left out. Fills in the fields
// Bunce's rules are about. Returns the first item whose value cannot be sent (its problem in
// *problem), or nullptr.
const LayoutItem *row_payload(StringInfo buf, TriggerSetup *s, TupleTableSlot *slot,
                              bunce::PayloadFields *fields, Problem *problem) {
    *fields = bunce::PayloadFields();
    const LayoutItem *bad = nullptr;
    resetStringInfo(buf);
    appendStringInfoChar(buf, '{');
    bool first = true;
    for (int i = 0; i < s->nitems; i++) {
        LayoutItem *item = &s->items[i];
        if (item->kind == bunce::MappingItem::end_object) {
            appendStringInfoChar(buf, '}');
            first = false;
            continue;
        }
        Datum d = 0;
        if (item->kind == bunce::MappingItem::field) {
            bool isnull;
            d = slot_getattr(slot, s->columns[item->column].attnum, &isnull);
            if (isnull) continue;
        }
        if (!first) appendStringInfoChar(buf, ',');
        escape_json(buf, item->key);
        appendStringInfoChar(buf, ':');
        if (item->kind == bunce::MappingItem::begin_object) {
            appendStringInfoChar(buf, '{');
            fields->has_customer |= item->role == ROLE_CUSTOMER;
            first = true;
            continue;
        }
        const char *text = nullptr;
        if (Problem p = append_value(buf, &s->columns[item->column], d, item, &text); p && !bad) {
            bad = item;
            *problem = p;
        }
        if (item->role == ROLE_EMAIL) fields->email = text;
        else if (item->role == ROLE_CUSTOMER_ID) fields->customer_id = text;
        else if (item->role == ROLE_CUSTOMER_EMAIL) fields->customer_email = text;
        first = false;
    }
    appendStringInfoChar(buf, '}');
    return bad;
}

void enqueue_row(OutboxWriter *w, TriggerSetup *s, TupleTableSlot *slot, StringInfo buf,
                 const char *context) {
    bunce::PayloadFields fields;
    Problem problem = nullptr;
    const LayoutItem *bad = row_payload(buf, s, slot, &fields, &problem);
    CoreError err;
    Datum payload = 0;
    if (bad) {
        err.failed = true;
        err.sqlstate = ERRCODE_INVALID_PARAMETER_VALUE;
        snprintf(err.message, sizeof err.message, "payload field \"%s\" (column \"%s\") %s", bad->key,
                 s->columns[bad->column].name, problem);
        strlcpy(err.hint, "Correct the value, or leave it out of the mapping.", sizeof err.hint);
    } else if (static_cast<size_t>(buf->len) > 2 * static_cast<size_t>(max_payload_size)) {
        // Far too large whatever its form: refused before anything parses it.
        within_size_limit(static_cast<size_t>(buf->len), err);
    } else if (!s->typed_check) {
        payload = prepare(buf->data, 0, err);
    } else if (guarded(err, [&] { bunce::check_fields(fields); })) {
        payload = DirectFunctionCall1(jsonb_in, CStringGetDatum(buf->data));
    }
    // The text built here is compact. From typed columns, jsonb's text form adds at most a
    // space after each ',' and ':'; a json column's text may be written in any form. So it
    // is measured as it will be sent, unless it certainly fits.
    if (!err.failed && (!s->typed_check || static_cast<size_t>(buf->len) * 2 > static_cast<size_t>(max_payload_size))) {
        Jsonb *jb = DatumGetJsonbP(payload);
        char *sent = JsonbToCString(nullptr, &jb->root, VARSIZE(jb));
        within_size_limit(strlen(sent), err);
        pfree(sent);
    }
    if (err.failed) {
        refuse(err, context, UUIDPGetDatum(&s->event_id), false, buf->data);
        return;
    }
    outbox_insert(w, UUIDPGetDatum(&s->event_id), payload);
}

}  // namespace

namespace bunce_pg {
namespace {

// Whether a function is bunce's trigger: a C function of this library's bunce_trigger_row
// (read from the catalog: another C function's library is not loaded for this).
bool is_bunce_trigger(Oid function) {
    HeapTuple tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(function));
    if (!HeapTupleIsValid(tuple)) return false;
    bool ours = false;
    if (reinterpret_cast<Form_pg_proc>(GETSTRUCT(tuple))->prolang == ClanguageId) {
        FmgrInfo f;
        bool isnull;
        const Datum prosrc = SysCacheGetAttr(PROCOID, tuple, Anum_pg_proc_prosrc, &isnull);
        if (!isnull && strcmp(TextDatumGetCString(prosrc), "bunce_trigger_row") == 0) {
            fmgr_info(function, &f);
            ours = f.fn_addr == bunce_trigger_row;
        }
    }
    ReleaseSysCache(tuple);
    return ours;
}

[[noreturn]] void refuse_timing(const char *tgname, const char *table) {
    ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
                    errmsg("trigger \"%s\" on table \"%s\": bunce_trigger() must be an AFTER INSERT, UPDATE or DELETE trigger",
                           tgname, table),
                    errhint("An event describes a change that happened: use AFTER.")));
}

[[noreturn]] void refuse_no_transition_table(const char *tgname, const char *table, bool deleting) {
    ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
                    errmsg("trigger \"%s\" on table \"%s\": a statement-level bunce_trigger() needs a transition table",
                           tgname, table),
                    errhint("Add REFERENCING %s TABLE AS changed_rows to CREATE TRIGGER.", deleting ? "OLD" : "NEW")));
}

void check_create_trigger(CreateTrigStmt *stmt) {
    const Oid function = LookupFuncName(stmt->funcname, 0, nullptr, true);
    if (!OidIsValid(function) || !is_bunce_trigger(function)) return;
    Relation rel = table_openrv(stmt->relation, ShareRowExclusiveLock);  // as CREATE TRIGGER will
    const char *table = RelationGetRelationName(rel);
    if ((stmt->timing & (TRIGGER_TYPE_BEFORE | TRIGGER_TYPE_INSTEAD)) || (stmt->events & TRIGGER_TYPE_TRUNCATE))
        refuse_timing(stmt->trigname, table);
    if (!stmt->row) {
        bool has_new = false, has_old = false;
        ListCell *lc;
        foreach (lc, stmt->transitionRels) {
            const auto *t = lfirst_node(TriggerTransition, lc);
            (t->isNew ? has_new : has_old) = true;
        }
        if ((stmt->events & (TRIGGER_TYPE_INSERT | TRIGGER_TYPE_UPDATE)) && !has_new)
            refuse_no_transition_table(stmt->trigname, table, false);
        if ((stmt->events & TRIGGER_TYPE_DELETE) && !has_old) refuse_no_transition_table(stmt->trigname, table, true);
    }
    const int nargs = list_length(stmt->args);
    char **args = static_cast<char **>(palloc(sizeof(char *) * Max(nargs, 1)));
    int i = 0;
    ListCell *lc;
    foreach (lc, stmt->args) args[i++] = strVal(lfirst(lc));
    TriggerSetup probe;
    memset(&probe, 0, sizeof probe);
    probe.cxt = AllocSetContextCreate(CurrentMemoryContext, "bunce trigger check", ALLOCSET_SMALL_SIZES);
    build_setup(&probe, stmt->trigname, nargs, args, rel);
    MemoryContextDelete(probe.cxt);
    table_close(rel, NoLock);
}

// After ALTER TABLE ... RENAME COLUMN or DROP COLUMN: a bunce trigger whose
// mapping names a column that is gone would refuse every row from now on. The ALTER goes
// through (the mapping is text, not a dependency), with a WARNING naming the trigger.
void warn_broken_mappings(Node *stmt) {
    RangeVar *rv = nullptr;
    if (IsA(stmt, RenameStmt)) {
        auto *r = castNode(RenameStmt, stmt);
        if (r->renameType == OBJECT_COLUMN) rv = r->relation;
    } else {
        auto *a = castNode(AlterTableStmt, stmt);
        ListCell *lc;
        foreach (lc, a->cmds)
            if (lfirst_node(AlterTableCmd, lc)->subtype == AT_DropColumn) rv = a->relation;
    }
    if (!rv) return;
    const Oid relid = RangeVarGetRelid(rv, NoLock, true);
    if (!OidIsValid(relid)) return;
    CommandCounterIncrement();
    Relation rel = table_open(relid, AccessShareLock);
    TriggerDesc *triggers = rel->trigdesc;
    for (int t = 0; triggers && t < triggers->numtriggers; t++) {
        const Trigger *tg = &triggers->triggers[t];
        if (tg->tgnargs != 2 || !is_bunce_trigger(tg->tgfoid)) continue;
        CoreError err;
        int nitems = 0;
        LayoutItem *items = nullptr;
        char **columns = nullptr;
        // a mapping that does not parse was refused at CREATE TRIGGER
        if (!parse_mapping_layout(tg->tgargs[1], &items, &columns, &nitems, err)) continue;
        for (int i = 0; i < nitems; i++)
            if (items[i].kind == bunce::MappingItem::field && get_attnum(relid, columns[i]) == InvalidAttrNumber)
                ereport(WARNING, (errcode(ERRCODE_UNDEFINED_COLUMN),
                                  errmsg("trigger \"%s\" on table \"%s\": mapping key \"%s\" names column \"%s\", which no longer exists",
                                         tg->tgname, RelationGetRelationName(rel), items[i].key, columns[i]),
                                  errhint("Until the mapping is fixed (CREATE OR REPLACE TRIGGER), the trigger refuses every row.")));
    }
    table_close(rel, AccessShareLock);
}

}  // namespace
}  // namespace bunce_pg

Datum bunce_trigger_row(PG_FUNCTION_ARGS) {
    if (!CALLED_AS_TRIGGER(fcinfo))
        ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
                        errmsg("bunce_trigger() with no arguments can only be called as a trigger"),
                        errhint("Call bunce_trigger(event_id, payload) to enqueue from SQL.")));
    auto *td = reinterpret_cast<TriggerData *>(fcinfo->context);
    const char *table = RelationGetRelationName(td->tg_relation);
    const char *tgname = td->tg_trigger->tgname;
    if (!TRIGGER_FIRED_AFTER(td->tg_event) || TRIGGER_FIRED_BY_TRUNCATE(td->tg_event)) refuse_timing(tgname, table);
    check_writable("A bunce trigger");
    check_served_database();
    TriggerSetup *s = trigger_setup(td);
    triggers_running++;
    const bool deleting = TRIGGER_FIRED_BY_DELETE(td->tg_event);
    char *context = psprintf("trigger \"%s\" on table \"%s\"", tgname, table);
    StringInfoData buf;
    initStringInfo(&buf);
    OutboxWriter w;

    if (TRIGGER_FIRED_FOR_ROW(td->tg_event)) {
        HeapTuple tuple = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
        TupleTableSlot *slot = MakeSingleTupleTableSlot(RelationGetDescr(td->tg_relation), &TTSOpsHeapTuple);
        ExecStoreHeapTuple(tuple, slot, false);
        enqueue_row(single_row_writer(), s, slot, &buf, context);
        ExecDropSingleTupleTableSlot(slot);
        triggers_running--;
        return PointerGetDatum(nullptr);
    }

    Tuplestorestate *rows = deleting ? td->tg_oldtable : td->tg_newtable;
    if (!rows) refuse_no_transition_table(tgname, table, deleting);
    TupleTableSlot *slot = MakeSingleTupleTableSlot(RelationGetDescr(td->tg_relation), &TTSOpsMinimalTuple);
    MemoryContext per_row = AllocSetContextCreate(CurrentMemoryContext, "bunce row", ALLOCSET_DEFAULT_SIZES);
    outbox_open(&w, true);
    tuplestore_rescan(rows);
    while (tuplestore_gettupleslot(rows, true, false, slot)) {
        MemoryContext old = MemoryContextSwitchTo(per_row);
        enqueue_row(&w, s, slot, &buf, context);
        MemoryContextSwitchTo(old);
        MemoryContextReset(per_row);
        CHECK_FOR_INTERRUPTS();
    }
    outbox_close(&w);
    ExecDropSingleTupleTableSlot(slot);
    triggers_running--;
    return PointerGetDatum(nullptr);
}
