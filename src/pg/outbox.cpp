// The outbox writer. See outbox.hpp.
#include <cstring>

#include "commit_wake.hpp"
#include "outbox.hpp"
#include "settings.hpp"
#include "shmem.hpp"

extern "C" {
#include "access/detoast.h"
#include "access/genam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "storage/backendid.h"
#include "catalog/namespace.h"
#include "catalog/pg_sequence.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/sequence.h"
#include "common/hashfn.h"
#include "common/pg_prng.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "optimizer/optimizer.h"
#include "rewrite/rewriteHandler.h"
#include "storage/proc.h"
#include "storage/sinval.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/inval.h"
#include "utils/resowner.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

PGDLLEXPORT Datum bunce_next_event_id(PG_FUNCTION_ARGS);
PG_FUNCTION_INFO_V1(bunce_next_event_id);
}

#if PG_VERSION_NUM < 150000 || PG_VERSION_NUM >= 160000
#error "bunce builds for PostgreSQL 15: ExecInsertIndexTuples and table_multi_insert are called as in 15"
#endif

namespace bunce_pg {
namespace {

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
    {"ordering_key", INT8OID, false},
    {"scheduled", BOOLOID, false},
};
constexpr int OUTBOX_BATCH = 1000;
constexpr size_t OUTBOX_BATCH_BYTES = 512 * 1024;  // large payloads: far fewer rows

}  // namespace

Oid bunce_namespace() {
    Oid nsp = get_namespace_oid("bunce", true);
    if (!OidIsValid(nsp))
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("extension \"bunce\" is not installed in this database"),
                        errhint("Run CREATE EXTENSION bunce.")));
    return nsp;
}

bool database_listed() {
    static char *checked = nullptr;  // the bunce.database value `listed` was found for
    static bool listed = false;
    if (!checked || strcmp(checked, database) != 0) {
        DatabaseList list;
        char problem[256];
        const char *here = get_database_name(MyDatabaseId);
        listed = false;
        if (here && parse_databases(database, &list, problem, sizeof problem))
            for (int i = 0; i < list.count && !listed; i++) listed = strcmp(list.names[i], here) == 0;
        if (checked) pfree(checked);
        checked = MemoryContextStrdup(TopMemoryContext, database);
    }
    return listed;
}

// Workers deliver the outboxes of the databases of bunce.database only: an event enqueued in
// another database would wait there for ever. (Without shared_preload_libraries there is no
// worker at all, and bunce.status says so.)
void check_served_database() {
    if (!shared || database_listed()) return;
    const char *here = get_database_name(MyDatabaseId);
    ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                    errmsg("bunce does not deliver the events of database \"%s\"", here ? here : "?"),
                    errdetail("bunce.database is \"%s\".", database),
                    errhint("Enqueue in a database that bunce.database lists, or add this one to it and reload.")));
}

void check_writable(const char *what) {
    if (XactReadOnly || RecoveryInProgress())
        ereport(ERROR, (errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
                        errmsg("cannot enqueue a bunce event in a read-only transaction"),
                        errhint("%s must run where the business write runs: on the primary, in a "
                                "read-write transaction.",
                                what)));
}

namespace {

[[noreturn]] void outbox_mismatch(const char *detail) {
    ereport(ERROR,
            (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
             errmsg("bunce.outbox does not have the columns this version of bunce expects"), errdetail("%s", detail),
             errhint("Run ALTER EXTENSION bunce UPDATE, and reconnect sessions that loaded an older bunce.")));
}

// Finds the columns by name in the table as it is now (the lock just taken has processed
// any pending invalidation, and holds off ALTER TABLE until this transaction ends). Returns
// what does not fit, or nullptr.
const char *map_outbox_columns(OutboxWriter *w) {
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
                return psprintf("Column \"%s\" has type %s, expected %s.", outbox_columns[c].name,
                                format_type_be(att->atttypid), format_type_be(outbox_columns[c].type));
            w->column[c] = i;
            continue;
        }
        if (att->attgenerated) return psprintf("Column \"%s\" is generated.", NameStr(att->attname));
        if (Node *def = build_column_default(w->rel, i + 1)) {
            // Evaluated inside the writer: nothing that could run SQL or change state.
            if (contain_volatile_functions(def))
                return psprintf("Column \"%s\" has a volatile default.", NameStr(att->attname));
            w->default_index[w->ndefaults] = i;
            w->default_expr[w->ndefaults] = ExecPrepareExpr(reinterpret_cast<Expr *>(def), w->estate);
            w->ndefaults++;
        } else if (att->attnotnull) {
            return psprintf("Column \"%s\" is NOT NULL without a default.", NameStr(att->attname));
        }
    }
    for (int c = 0; c < OUTBOX_NATTS; c++)
        if (outbox_columns[c].required && w->column[c] < 0)
            return psprintf("Column \"%s\" is missing.", outbox_columns[c].name);
    return nullptr;
}

}  // namespace

void outbox_open(OutboxWriter *w, bool bulk) {
    Oid nsp = bunce_namespace();
    Oid relid = get_relname_relid("outbox", nsp);
    w->seq = get_relname_relid("event_id_seq", nsp);
    if (!OidIsValid(relid) || !OidIsValid(w->seq))
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE), errmsg("bunce.outbox is missing"),
                        errhint("Reinstall the extension: DROP EXTENSION bunce; CREATE EXTENSION bunce.")));
    w->rel = table_open(relid, RowExclusiveLock);
    w->estate = CreateExecutorState();
    if (const char *mismatch = map_outbox_columns(w)) {
        // Let go first: the relation is held by a resource owner that may outlive this
        // (sub)transaction.
        FreeExecutorState(w->estate);
        table_close(w->rel, RowExclusiveLock);
        outbox_mismatch(mismatch);
    }
    w->rri = makeNode(ResultRelInfo);
    InitResultRelInfo(w->rri, w->rel, 1, nullptr, 0);
    ExecOpenIndices(w->rri, false);
    // A copy of the descriptor: the relcache's would be pinned by the transaction.
    w->slot = MakeSingleTupleTableSlot(CreateTupleDescCopy(RelationGetDescr(w->rel)), &TTSOpsVirtual);
    w->bistate = bulk ? GetBulkInsertState() : nullptr;
    // slots made as needed: most statements change a few rows
    w->batch = static_cast<TupleTableSlot **>(palloc0(sizeof(TupleTableSlot *) * OUTBOX_BATCH));
    w->nbatch = 0;
    w->batch_bytes = 0;
    w->batch_subxid = InvalidSubTransactionId;
    w->cxt = CurrentMemoryContext;
}

int row_batch_depth = 0;

namespace {

void outbox_flush(OutboxWriter *w) {
    const int n = w->nbatch;
    if (n == 0) return;
    // Empty before anything runs: an index expression's function that starts a statement
    // (and a flush, see flush_row_writer) finds nothing to write.
    w->nbatch = 0;
    w->batch_bytes = 0;
    MemoryContext old = MemoryContextSwitchTo(GetPerTupleMemoryContext(w->estate));
    const CommandId cid = GetCurrentCommandId(true);
    if (n == 1)  // a transaction's one event: no multi-insert record for it
        table_tuple_insert(w->rel, w->batch[0], cid, 0, w->bistate);
    else
        table_multi_insert(w->rel, w->batch, n, cid, 0, w->bistate);
    for (int i = 0; i < n; i++) {
        ExecInsertIndexTuples(w->rri, w->batch[i], w->estate, false, false, nullptr, NIL);
        ExecClearTuple(w->batch[i]);
    }
    MemoryContextSwitchTo(old);
    ResetPerTupleExprContext(w->estate);
}

void drop_batch(OutboxWriter *w) {
    // every slot made: a flush that failed had emptied the batch first
    for (int i = 0; i < OUTBOX_BATCH && w->batch[i]; i++) ExecClearTuple(w->batch[i]);
    w->nbatch = 0;
    w->batch_bytes = 0;
}

// Rows of an enclosing subtransaction wait in the writer: they cannot be written from here
// (they would be this subtransaction's), nor the writer closed.
bool holds_enclosing_rows(const OutboxWriter *w) {
    return w->nbatch > 0 && w->batch_subxid != GetCurrentSubTransactionId();
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

// The string member `name` of a jsonb object, or nullptr.
const JsonbValue *string_member(JsonbContainer *object, const char *name, JsonbValue *out) {
    if (!object || !JsonContainerIsObject(object)) return nullptr;
    const JsonbValue *v = getKeyJsonValueFromContainer(object, name, static_cast<int>(strlen(name)), out);
    return v && v->type == jbvString ? v : nullptr;
}

// The ordering key: exactly bunce.ordering_key(payload) in SQL, hashtextextended() of
// 'customer_id:<id>', else 'email:<customer.email>', else 'email:<email>'. False when the
// payload has none of them (never for a payload bunce_trigger accepted).
bool ordering_key(Datum payload, int64 *key) {
    Jsonb *jb = DatumGetJsonbP(payload);
    JsonbValue customer, member;
    JsonbContainer *c = nullptr;
    if (getKeyJsonValueFromContainer(&jb->root, "customer", 8, &customer) && customer.type == jbvBinary)
        c = customer.val.binary.data;
    const char *prefix = "customer_id:";
    const JsonbValue *v = string_member(c, "customer_id", &member);
    if (!v) {
        prefix = "email:";
        v = string_member(c, "email", &member);
    }
    if (!v) v = string_member(&jb->root, "email", &member);
    if (!v) return false;
    StringInfoData text;
    initStringInfo(&text);
    appendStringInfoString(&text, prefix);
    appendBinaryStringInfo(&text, v->val.string.val, v->val.string.len);
    *key = static_cast<int64>(hash_bytes_extended(reinterpret_cast<const unsigned char *>(text.data), text.len, 0));
    pfree(text.data);
    return true;
}

// The block of ids this transaction takes from: [next, end), of transaction block_xid.
FullTransactionId block_xid = InvalidFullTransactionId;
Oid block_seq = InvalidOid;  // the sequence it came from (the extension may be made again)
int64 block_next = 0, block_end = 0;

// The writer for single rows, kept open for the rest of the command: a COPY or a multi-row
// INSERT fires the row trigger once per row, and opening the outbox and its indexes each time
// cost about as much as the insert. Its relations are held by TopTransactionResourceOwner (the
// portal's may end first). It is closed before commit, and opened again when the command
// counter moves on, so that it never misses a change to the table made by an earlier command
// of the transaction. After an ERROR the transaction abort releases its relations.
//
// A row trigger's rows wait in its batch and go to the table in one table_multi_insert (a WAL
// record and a buffer lock per page instead of per row) when the statement that fired it ends
// (row_batch_depth), before a utility command, before commit, or when the batch is full: the
// next statement sees them. (Rows of a table with other AFTER triggers, which could look for
// them, are written at once.) They are written in the subtransaction that made them: rows of
// a subtransaction that commits go to its parent, those of one that aborts are dropped, and
// while an enclosing subtransaction's rows wait, rows are written at once and the writer stays
// open as it is. Their ids are taken when they are made, so the order of events is the same.
// Rows of bunce_trigger() are written at once: a PL/pgSQL assignment runs no statement that
// would end.
OutboxWriter *row_writer = nullptr;
CommandId row_writer_cid = InvalidCommandId;

// What that writer built, kept from one transaction to the next in a memory context of its own:
// the map of the columns and the executor's state for the indexes (their index info, the
// partial indexes' predicates compiled), which cost as much again as an insert. Opening it
// again only locks the relations. A relcache invalidation of the outbox or of one of its
// indexes (ALTER TABLE, CREATE INDEX, the extension made again) has it built anew.
OutboxWriter *kept = nullptr;
MemoryContext kept_cxt = nullptr;
Oid kept_relid = InvalidOid;
Oid *kept_indexes = nullptr;  // rri->ri_NumIndices of them
bool kept_stale = false;

void invalidate_kept(Datum, Oid relid) {
    if (!kept || kept_stale) return;
    bool ours = relid == InvalidOid || relid == kept_relid;
    for (int i = 0; !ours && i < kept->rri->ri_NumIndices; i++) ours = relid == kept_indexes[i];
    kept_stale = ours;
}

void build_kept() {
    static bool registered = false;
    if (!registered) {
        CacheRegisterRelcacheCallback(invalidate_kept, 0);
        registered = true;
    }
    // Under the transaction until it is complete: an ERROR on the way frees it.
    MemoryContext cxt = AllocSetContextCreate(TopTransactionContext, "bunce outbox writer", ALLOCSET_SMALL_SIZES);
    MemoryContext old = MemoryContextSwitchTo(cxt);
    const uint64 invalidations = SharedInvalidMessageCounter;
    auto *w = static_cast<OutboxWriter *>(palloc(sizeof(OutboxWriter)));
    outbox_open(w, false);
    auto *indexes = static_cast<Oid *>(palloc(sizeof(Oid) * Max(1, w->rri->ri_NumIndices)));
    for (int i = 0; i < w->rri->ri_NumIndices; i++) indexes[i] = RelationGetRelid(w->rri->ri_IndexRelationDescs[i]);
    MemoryContextSwitchTo(old);
    MemoryContextSetParent(cxt, TopMemoryContext);
    kept = w;
    kept_cxt = cxt;
    kept_relid = RelationGetRelid(w->rel);
    kept_indexes = indexes;
    // Invalidations taken in while it was built, after the table was locked, may be about it.
    kept_stale = SharedInvalidMessageCounter != invalidations;
}

void discard_kept() {
    MemoryContextDelete(kept_cxt);
    kept = nullptr;
    kept_cxt = nullptr;
    kept_relid = InvalidOid;
    kept_indexes = nullptr;
}

// Opens the kept writer's relations; false (nothing open) when it must be built anew.
bool reopen_kept() {
    // Defaults of columns added by hand are built anew each time: they may call functions
    // that change (no invalidation of the outbox says so) and whose privileges the role of
    // the moment must have.
    if (kept_stale || kept->ndefaults > 0) return false;
    const Oid nsp = bunce_namespace();
    if (get_relname_relid("outbox", nsp) != kept_relid || get_relname_relid("event_id_seq", nsp) != kept->seq)
        return false;
    Relation rel = table_open(kept_relid, RowExclusiveLock);
    if (kept_stale) {  // invalidations taken in with the lock
        table_close(rel, NoLock);
        return false;
    }
    kept->rel = rel;
    kept->rri->ri_RelationDesc = rel;
    for (int i = 0; i < kept->rri->ri_NumIndices; i++)
        kept->rri->ri_IndexRelationDescs[i] = index_open(kept_indexes[i], RowExclusiveLock);
    return true;
}

}  // namespace

int64 next_event_id(Oid seq) {
    // The transaction id first: a transaction that holds ids is known by it (see below).
    const FullTransactionId xid = GetTopFullTransactionId();
    const bool first_block = !FullTransactionIdEquals(block_xid, xid) || block_seq != seq;
    if (first_block || block_next >= block_end) {
        HeapTuple t = SearchSysCache1(SEQRELID, ObjectIdGetDatum(seq));
        if (!HeapTupleIsValid(t)) elog(ERROR, "cache lookup failed for sequence %u", seq);
        const auto *form = reinterpret_cast<Form_pg_sequence>(GETSTRUCT(t));
        const bool as_made = form->seqincrement == kIdBlock && form->seqcache == 1;
        ReleaseSysCache(t);
        // A cache would hand a session ids taken before other transactions committed; another
        // increment would hand out ids of blocks other transactions hold.
        if (!as_made)
            ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                            errmsg("bunce.event_id_seq must have INCREMENT BY %d and CACHE 1", kIdBlock),
                            errdetail("Event ids keep the order of events and stay unique only so."),
                            errhint("Run ALTER SEQUENCE bunce.event_id_seq INCREMENT BY %d CACHE 1.", kIdBlock)));
        // The worker learns that this transaction holds ids from its first block on, and
        // before the block is taken (it reads the sequence, then the holders).
        IdHolder *h = first_block && id_holders ? &id_holders[MyBackendId - 1] : nullptr;
        if (h) {
            h->xid = xid;
            h->database = MyDatabaseId;
            pg_write_barrier();
            pg_atomic_write_u64(&h->first, kTakingIds);
            pg_memory_barrier();
        }
        block_next = nextval_internal(seq, false);
        block_end = block_next + kIdBlock;
        block_xid = xid;
        block_seq = seq;
        if (h) pg_atomic_write_u64(&h->first, static_cast<uint64>(block_next));
    }
    return block_next++;
}

void release_ids(bool prepared) {
    if (!id_holders || MyBackendId == InvalidBackendId) return;
    IdHolder *h = &id_holders[MyBackendId - 1];
    const uint64 first = pg_atomic_read_u64(&h->first);
    if (first == 0) return;
    if (prepared) {
        // The prepared transaction still holds its ids, in a slot of its own until it ends
        // (before this backend's slot is cleared, so that the worker always sees one).
        IdHolder *free_slot = nullptr;
        SpinLockAcquire(&shared->mutex);
        for (int i = n_backend_holders; i < n_backend_holders + n_prepared_holders && !free_slot; i++)
            if (pg_atomic_read_u64(&id_holders[i].first) == 0) free_slot = &id_holders[i];
        if (free_slot) {
            free_slot->xid = h->xid;
            free_slot->database = h->database;
            pg_write_barrier();
            pg_atomic_write_u64(&free_slot->first, first);
        }
        SpinLockRelease(&shared->mutex);
        if (!free_slot)  // slots of prepared transactions that ended are freed by the worker
            ereport(ERROR, (errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
                            errmsg("too many prepared transactions hold bunce events"),
                            errhint("Commit or roll back prepared transactions (pg_prepared_xacts), then retry.")));
    }
    pg_atomic_write_u64(&h->first, 0);
}

int64 outbox_insert(OutboxWriter *w, Datum event_id, Datum payload, bool may_wait) {
    TupleTableSlot *slot = w->slot;
    // Not with defaults of columns added by hand in the single-row writer: their functions
    // could run a statement, and so a flush, in the middle of this.
    const bool batched =
        may_wait && (w->bistate || (row_batch_depth > 0 && w->ndefaults == 0 && !holds_enclosing_rows(w)));
    if (batched) {
        if (!w->batch[w->nbatch]) {
            MemoryContext old = MemoryContextSwitchTo(w->cxt);
            w->batch[w->nbatch] = MakeSingleTupleTableSlot(w->slot->tts_tupleDescriptor, &TTSOpsHeapTuple);
            MemoryContextSwitchTo(old);
        }
        slot = w->batch[w->nbatch];
        // The row is written later: not with a pointer to a value stored elsewhere.
        if (VARATT_IS_EXTERNAL(DatumGetPointer(payload)))
            payload = PointerGetDatum(detoast_external_attr(reinterpret_cast<varlena *>(DatumGetPointer(payload))));
    }
    ExecClearTuple(slot);
    // A schema before ordering (1.3, not yet updated) has a cached sequence: ids one at a time.
    const int64 id = w->column[COL_SCHEDULED] >= 0 ? next_event_id(w->seq) : nextval_internal(w->seq, false);
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
    int64 key;
    if (w->column[COL_ORDERING_KEY] >= 0 && ordering_key(payload, &key)) set(COL_ORDERING_KEY, Int64GetDatum(key));
    if (w->column[COL_SCHEDULED] >= 0) set(COL_SCHEDULED, BoolGetDatum(false));
    ExecStoreVirtualTuple(slot);
    if (batched) {
        ExecMaterializeSlot(slot);  // its values live in the caller's per-row memory
        if (w->nbatch++ == 0) w->batch_subxid = GetCurrentSubTransactionId();
        w->batch_bytes += VARSIZE_ANY(DatumGetPointer(payload));
        if (w->nbatch == OUTBOX_BATCH || w->batch_bytes >= OUTBOX_BATCH_BYTES) outbox_flush(w);
    } else {
        table_tuple_insert(w->rel, slot, GetCurrentCommandId(true), 0, nullptr);
        ExecInsertIndexTuples(w->rri, slot, w->estate, false, false, nullptr, NIL);
        ResetPerTupleExprContext(w->estate);
    }
    note_enqueued(1);
    return id;
}

void outbox_close(OutboxWriter *w) {
    outbox_flush(w);
    for (int i = 0; i < OUTBOX_BATCH && w->batch[i]; i++) ExecDropSingleTupleTableSlot(w->batch[i]);
    if (w->bistate) FreeBulkInsertState(w->bistate);
    ExecDropSingleTupleTableSlot(w->slot);
    ExecCloseIndices(w->rri);
    FreeExecutorState(w->estate);
    table_close(w->rel, NoLock);
}

void flush_row_writer() {
    // (Nothing can be written in parallel mode: the rows wait for the next chance.)
    if (row_writer && !holds_enclosing_rows(row_writer) && !IsInParallelMode()) outbox_flush(row_writer);
}

void close_row_writer() {
    if (!row_writer || holds_enclosing_rows(row_writer) || IsInParallelMode()) return;
    outbox_flush(row_writer);
    ResourceOwner save = CurrentResourceOwner;
    CurrentResourceOwner = TopTransactionResourceOwner;
    // As ExecCloseIndices: the index locks go, the table's lock is kept to the end.
    for (int i = 0; i < kept->rri->ri_NumIndices; i++)
        index_close(kept->rri->ri_IndexRelationDescs[i], RowExclusiveLock);
    table_close(kept->rel, NoLock);
    CurrentResourceOwner = save;
    row_writer = nullptr;
}

void end_row_writer_subxact(SubTransactionId subxid, SubTransactionId parent, bool committed) {
    if (!row_writer || row_writer->nbatch == 0 || row_writer->batch_subxid != subxid) return;
    if (committed)
        row_writer->batch_subxid = parent;
    else
        drop_batch(row_writer);
}

void forget_row_writer() {
    if (row_writer) drop_batch(row_writer);
    row_writer = nullptr;
}

OutboxWriter *single_row_writer() {
    const CommandId cid = GetCurrentCommandId(false);
    // An enclosing subtransaction's rows keep it open (and the relations locked) as it is.
    if (row_writer && (row_writer_cid == cid || holds_enclosing_rows(row_writer))) return row_writer;
    close_row_writer();
    ResourceOwner save = CurrentResourceOwner;
    CurrentResourceOwner = TopTransactionResourceOwner;
    if (kept && !reopen_kept()) discard_kept();
    if (!kept) build_kept();
    CurrentResourceOwner = save;
    row_writer = kept;
    row_writer_cid = cid;
    return row_writer;
}

}  // namespace bunce_pg

// bunce.next_event_id(): the default of bunce.outbox.id, so that rows written by SQL take
// their ids as bunce_trigger does.
Datum bunce_next_event_id(PG_FUNCTION_ARGS) {
    (void)fcinfo;
    const Oid seq = get_relname_relid("event_id_seq", bunce_pg::bunce_namespace());
    if (!OidIsValid(seq))
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE), errmsg("bunce.event_id_seq is missing"),
                        errhint("Reinstall the extension: DROP EXTENSION bunce; CREATE EXTENSION bunce.")));
    PG_RETURN_INT64(bunce_pg::next_event_id(seq));
}
