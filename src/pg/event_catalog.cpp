// The event catalog in a backend: bunce.events read into a cache (read again after each
// sync), the checks at enqueue, event names; bunce.refresh_events() asks this database's
// worker to sync now and waits for it (the caller's backend makes no HTTP request), and
// bunce.event_id(name).
#include <cstring>

#include "catalog.hpp"
#include "enqueue.hpp"
#include "event_catalog.hpp"
#include "outbox.hpp"
#include "shmem.hpp"

extern "C" {
#include "access/heapam.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PGDLLEXPORT Datum bunce_refresh_events(PG_FUNCTION_ARGS);
PG_FUNCTION_INFO_V1(bunce_refresh_events);
PGDLLEXPORT Datum bunce_event_id(PG_FUNCTION_ARGS);
PG_FUNCTION_INFO_V1(bunce_event_id);
}

namespace bunce_pg {
namespace {

struct CachedParameter {
    char *name;
    bunce::EventParameter::Type type;
    bool required;
};

struct CachedEvent {
    pg_uuid_t id;  // hash key
    char *name;
    int nparameters;
    CachedParameter *parameters;
};

// The cache: read when first needed, and again when catalog_version() moved on.
MemoryContext catalog_cxt = nullptr;
HTAB *catalog = nullptr;
uint64 catalog_read_at = 0;

// One event's parameters from their JSON text into the cache's memory; false (the event is
// then not checked) when they cannot be read, as a row written by hand may be.
bool read_parameters(CachedEvent *e, const char *json, MemoryContext cxt) {
    CoreError err;
    return guarded(err, [&] {
        const std::vector<bunce::EventParameter> p = bunce::parse_parameters(json);
        auto *out = static_cast<CachedParameter *>(
            MemoryContextAllocExtended(cxt, sizeof(CachedParameter) * (p.size() + 1), MCXT_ALLOC_NO_OOM));
        if (!out) throw std::bad_alloc();
        for (size_t i = 0; i < p.size(); i++) {
            char *name = static_cast<char *>(MemoryContextAllocExtended(cxt, p[i].name.size() + 1, MCXT_ALLOC_NO_OOM));
            if (!name) throw std::bad_alloc();
            memcpy(name, p[i].name.c_str(), p[i].name.size() + 1);
            out[i] = {name, p[i].type, p[i].required};
        }
        e->parameters = out;
        e->nparameters = static_cast<int>(p.size());
    });
}

// An empty catalog table in cxt (nullptr: the current memory context).
HTAB *new_catalog(MemoryContext cxt) {
    HASHCTL ctl;
    memset(&ctl, 0, sizeof ctl);
    ctl.keysize = sizeof(pg_uuid_t);
    ctl.entrysize = sizeof(CachedEvent);
    ctl.hcxt = cxt;
    return hash_create("bunce event catalog", 64, &ctl, HASH_ELEM | HASH_BLOBS | (cxt ? HASH_CONTEXT : 0));
}

// Reads bunce.events as last committed (whatever the caller's snapshot: it is a copy of what
// Bunce says, not data of the transaction) into a new copy, which replaces the old one only
// once it is whole. The lock is let go at once, and never waited for: while an ALTER of the
// table holds it, the old copy stays (none: no checks) and the table is read again at the
// next enqueue. So no enqueue waits on bunce.events, nor holds up an ALTER or a sync.
void read_catalog() {
    const uint64 version = catalog_version();  // before the snapshot: a sync after it is read again
    const Oid relid = get_relname_relid("events", bunce_namespace());
    if (OidIsValid(relid) && !ConditionalLockRelationOid(relid, AccessShareLock)) return;
    MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "bunce event catalog", ALLOCSET_DEFAULT_SIZES);
    HTAB *events = new_catalog(cxt);
    if (OidIsValid(relid)) {  // (none: a schema before the catalog)
        Relation rel = table_open(relid, NoLock);
        TupleDesc desc = RelationGetDescr(rel);
        // The columns as made by the extension script (id, name, description, parameters, ...).
        if (desc->natts >= 4 && TupleDescAttr(desc, 0)->atttypid == UUIDOID &&
            TupleDescAttr(desc, 1)->atttypid == TEXTOID && TupleDescAttr(desc, 3)->atttypid == JSONBOID) {
            Snapshot snapshot = RegisterSnapshot(GetLatestSnapshot());
            TableScanDesc scan = table_beginscan(rel, snapshot, 0, nullptr);
            HeapTuple tuple;
            while ((tuple = heap_getnext(scan, ForwardScanDirection)) != nullptr) {
                bool null_id, null_name, null_parameters;
                const Datum id = heap_getattr(tuple, 1, desc, &null_id);
                const Datum name = heap_getattr(tuple, 2, desc, &null_name);
                const Datum parameters = heap_getattr(tuple, 4, desc, &null_parameters);
                if (null_id || null_name) continue;
                bool found;
                auto *e = static_cast<CachedEvent *>(hash_search(events, DatumGetUUIDP(id), HASH_ENTER, &found));
                e->name = MemoryContextStrdup(cxt, TextDatumGetCString(name));
                e->nparameters = 0;
                e->parameters = nullptr;
                if (!null_parameters) {
                    Jsonb *jb = DatumGetJsonbP(parameters);
                    read_parameters(e, JsonbToCString(nullptr, &jb->root, VARSIZE(jb)), cxt);
                }
            }
            table_endscan(scan);
            UnregisterSnapshot(snapshot);
        }
        table_close(rel, AccessShareLock);
    }
    if (catalog_cxt) MemoryContextDelete(catalog_cxt);
    catalog_cxt = cxt;
    catalog = events;
    catalog_read_at = version;
}

HTAB *current_catalog() {
    if (!catalog || catalog_version() != catalog_read_at) read_catalog();
    return catalog ? catalog : new_catalog(nullptr);  // never read, and the table locked: none for now
}

// A parameter's value in the payload, as the core's check reads it.
bunce::ParameterValue parameter_value(Jsonb *payload, const char *name, JsonbValue *v) {
    if (!getKeyJsonValueFromContainer(&payload->root, name, static_cast<int>(strlen(name)), v))
        return {bunce::ParameterValue::absent, {}};
    switch (v->type) {
        case jbvNull: return {bunce::ParameterValue::null, {}};
        case jbvString:
            return {bunce::ParameterValue::string, {v->val.string.val, static_cast<size_t>(v->val.string.len)}};
        case jbvNumeric: return {bunce::ParameterValue::number, {}};
        case jbvBool: return {bunce::ParameterValue::boolean, {}};
        default: return {bunce::ParameterValue::container, {}};
    }
}

// A date-time without an offset, read in the session's TimeZone (as a timestamp column is),
// in Bunce's form; nullptr when Bunce's form cannot hold it.
const char *local_time_utc(const char *text) {
    return utc_text(DatumGetTimestampTz(
        DirectFunctionCall3(timestamptz_in, CStringGetDatum(text), ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1))));
}

// The payload with some top-level members' values replaced by strings.
Datum replace_members(Jsonb *payload, int n, const char **names, const char **values) {
    JsonbParseState *state = nullptr;
    JsonbIterator *it = JsonbIteratorInit(&payload->root);
    JsonbValue v;
    JsonbIteratorToken token;
    JsonbValue *result = nullptr;
    const char *replacing = nullptr;
    while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE) {
        if (token == WJB_KEY) {
            replacing = nullptr;
            for (int i = 0; i < n; i++)
                if (static_cast<size_t>(v.val.string.len) == strlen(names[i]) &&
                    memcmp(v.val.string.val, names[i], v.val.string.len) == 0)
                    replacing = values[i];
        } else if (token == WJB_VALUE && replacing) {
            v.type = jbvString;
            v.val.string.val = const_cast<char *>(replacing);
            v.val.string.len = static_cast<int>(strlen(replacing));
        }
        result = pushJsonbValue(&state, token, token < WJB_BEGIN_ARRAY ? &v : nullptr);
    }
    return JsonbPGetDatum(JsonbValueToJsonb(result));
}

// Long enough for a catalog of many pages under Bunce's rate limit; statement_timeout and a
// cancel end the wait sooner.
constexpr long kRefreshWaitMs = 60 * 1000;

[[noreturn]] void refuse_no_worker(const char *why) {
    ereport(ERROR,
            (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE), errmsg("bunce cannot sync the event catalog: %s", why),
             errhint("The worker of this database syncs bunce.events; see SELECT * FROM bunce.status.")));
}

Datum refresh_events(FunctionCallInfo) {
    if (!shared) refuse_no_worker("bunce is not in shared_preload_libraries");
    WorkerSlot *slot = slot_of_database(MyDatabaseId);
    if (!slot) refuse_no_worker("no worker serves this database (bunce.database)");
    SpinLockAcquire(&slot->mutex);
    const WorkerState state = slot->state;
    const int pid = slot->pid;
    Latch *latch = slot->worker_latch;
    const uint64 ticket = ++slot->catalog_asked;
    SpinLockRelease(&slot->mutex);
    if (pid == 0 || !latch) refuse_no_worker("the worker is not running");
    if (state != WORKER_RUNNING) refuse_no_worker(psprintf("delivery is %s", state_name(state)));
    SetLatch(latch);

    const TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), kRefreshWaitMs);
    ConditionVariablePrepareToSleep(&slot->catalog_cv);
    for (;;) {
        SpinLockAcquire(&slot->mutex);
        const bool done = slot->catalog_done >= ticket;
        const bool failed = slot->catalog_failed;
        const int events = slot->catalog_events;
        const bool gone = slot->pid != pid;
        char error[sizeof slot->catalog_error];
        strlcpy(error, slot->catalog_error, sizeof error);
        SpinLockRelease(&slot->mutex);
        if (done) {
            ConditionVariableCancelSleep();
            if (failed)
                ereport(ERROR, (errcode(ERRCODE_CONNECTION_FAILURE),
                                errmsg("bunce could not sync the event catalog: %s", error),
                                errhint("bunce.events keeps the last catalog that was synced.")));
            PG_RETURN_INT32(events);
        }
        if (gone) refuse_no_worker("the worker stopped");
        const long left_ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
        if (left_ms <= 0)
            ereport(ERROR, (errcode(ERRCODE_QUERY_CANCELED),
                            errmsg("the bunce worker did not sync the event catalog within %ld seconds",
                                   kRefreshWaitMs / 1000),
                            errhint("See SELECT * FROM bunce.status; the sync goes on and bunce.events is "
                                    "updated when it ends.")));
        // Bounded sleeps: a worker that dies broadcasts nothing.
        ConditionVariableTimedSleep(&slot->catalog_cv, Min(left_ms, 1000L), PG_WAIT_EXTENSION);
    }
}

// bunce.event_id(name): the id of the one event of that name.
Datum event_id(FunctionCallInfo fcinfo) {
    const char *name = TextDatumGetCString(PG_GETARG_DATUM(0));
    auto *id = static_cast<pg_uuid_t *>(palloc(sizeof(pg_uuid_t)));
    const int found = event_id_by_name(name, id);
    if (found == 1)
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT), errmsg("bunce event \"%s\" is not in the catalog", name),
                        errhint("Names are case-sensitive. Run SELECT bunce.refresh_events() if the event was "
                                "created in Bunce since the last sync.")));
    if (found == 2)
        ereport(ERROR, (errcode(ERRCODE_DUPLICATE_OBJECT), errmsg("more than one bunce event is named \"%s\"", name),
                        errhint("Use the event's id: SELECT id, description FROM bunce.events WHERE name = %s.",
                                quote_literal_cstr(name))));
    PG_RETURN_UUID_P(id);
}

}  // namespace

uint64 catalog_version() {
    // Without the worker nothing tells a backend of a sync: the catalog is read once per
    // transaction then.
    if (!shared) return MyProc->lxid;
    return pg_atomic_read_u64(&shared->catalog_generation);
}

bool catalog_has_event(const pg_uuid_t *event_id) {
    return hash_search(current_catalog(), event_id, HASH_FIND, nullptr) != nullptr;
}

int event_id_by_name(const char *name, pg_uuid_t *id) {
    HASH_SEQ_STATUS it;
    hash_seq_init(&it, current_catalog());
    int found = 0;
    while (auto *e = static_cast<CachedEvent *>(hash_seq_search(&it))) {
        if (strcmp(e->name, name) != 0) continue;
        *id = e->id;
        found++;
    }
    return found == 0 ? 1 : found == 1 ? 0 : 2;
}

Datum check_event_parameters(const pg_uuid_t *event_id, Datum payload, CoreError &err) {
    if (!shared) return payload;
    const auto *e = static_cast<CachedEvent *>(hash_search(current_catalog(), event_id, HASH_FIND, nullptr));
    if (!e || e->nparameters == 0) return payload;
    Jsonb *jb = DatumGetJsonbP(payload);
    const char **names = static_cast<const char **>(palloc(sizeof(char *) * e->nparameters));
    const char **values = static_cast<const char **>(palloc(sizeof(char *) * e->nparameters));
    int nreplaced = 0;
    for (int i = 0; i < e->nparameters; i++) {
        const CachedParameter &p = e->parameters[i];
        // Identities, never rewritten (see the correctness rules of payload.hpp).
        if (strcmp(p.name, "email") == 0 || strcmp(p.name, "customer") == 0) continue;
        JsonbValue v;
        const bunce::ParameterValue value = parameter_value(jb, p.name, &v);
        bunce::ParameterCheck::Result result = bunce::ParameterCheck::ok;
        char *replacement = nullptr;
        if (!guarded(err, [&] {
                const bunce::ParameterCheck c = bunce::check_parameter(e->name, {p.name, p.type, p.required}, value);
                result = c.result;
                if (c.result == bunce::ParameterCheck::refused) throw bunce::InvalidPayload(c.message, c.hint);
                if (c.result == bunce::ParameterCheck::replace)
                    replacement = pstrdup_nothrow(c.value.data(), c.value.size());
            }))
            return static_cast<Datum>(0);
        if (result == bunce::ParameterCheck::local_time) {
            const char *utc = local_time_utc(pnstrdup(value.text.data(), value.text.size()));
            if (!utc) {
                err.failed = true;
                err.sqlstate = ERRCODE_INVALID_PARAMETER_VALUE;
                snprintf(err.message, sizeof err.message,
                         "bunce event \"%s\": parameter \"%s\" is outside the years 0001 to 9999 (UTC)", e->name,
                         p.name);
                strlcpy(err.hint, "Bunce's form YYYY-MM-DDTHH:MM:SSZ cannot hold it.", sizeof err.hint);
                return static_cast<Datum>(0);
            }
            replacement = const_cast<char *>(utc);
        }
        if (replacement) {
            names[nreplaced] = p.name;
            values[nreplaced++] = replacement;
        }
    }
    return nreplaced ? replace_members(jb, nreplaced, names, values) : payload;
}

}  // namespace bunce_pg

Datum bunce_refresh_events(PG_FUNCTION_ARGS) { return bunce_pg::refresh_events(fcinfo); }
Datum bunce_event_id(PG_FUNCTION_ARGS) { return bunce_pg::event_id(fcinfo); }
