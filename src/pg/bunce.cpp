// Module entry: _PG_init (settings, commit hooks, shared memory, the launcher) and
// bunce.worker_state(), the row behind bunce.status.
#include <cstring>

#include "commit_wake.hpp"
#include "outbox.hpp"
#include "settings.hpp"
#include "shmem.hpp"
#include "worker.hpp"

extern "C" {
#include "access/xlog.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_MODULE_MAGIC;

void _PG_init(void);
PGDLLEXPORT Datum bunce_worker_state(PG_FUNCTION_ARGS);
PG_FUNCTION_INFO_V1(bunce_worker_state);
}

namespace bunce_pg {
namespace {

// The columns of bunce.worker_state(), in the order of its OUT parameters.
enum StatusColumn {
    STATUS_STATE,
    STATUS_PID,
    STATUS_PAUSED_REASON,
    STATUS_PAUSED_UNTIL,
    STATUS_QUEUED,
    STATUS_IN_FLIGHT,
    STATUS_WAITING_RETRY,
    STATUS_DELIVERED,
    STATUS_FAILED,
    STATUS_POSSIBLY_DUPLICATED,
    STATUS_DELIVERED_LAST_HOUR,
    STATUS_FAILED_LAST_HOUR,
    STATUS_REQUESTS_LAST_MINUTE,
    STATUS_LAST_SUCCESS_AT,
    STATUS_LAST_ERROR_STATUS,
    STATUS_LAST_ERROR,
    STATUS_LAST_ERROR_AT,
    STATUS_STARTED_AT,
    STATUS_WAITING_TURN,
    STATUS_CATALOG_SYNCED_AT,
    STATUS_CATALOG_EVENTS,
    STATUS_CATALOG_ERROR,
    STATUS_NATTS
};

// One row of worker state for bunce.status. Without shared_preload_libraries there is no
// worker: the row says so instead of failing, so that the view always answers.
Datum worker_state_row(FunctionCallInfo fcinfo) {
    TupleDesc tupdesc;
    if (get_call_result_type(fcinfo, nullptr, &tupdesc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "return type must be a row type");
    // A schema older than the library declares a prefix of these columns (new ones are
    // appended); one newer than the library, more than it knows.
    if (tupdesc->natts > STATUS_NATTS)
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("bunce.worker_state() has more columns than the loaded bunce library knows"),
                        errhint("Restart the server to load the bunce library of the extension's version.")));
    Datum values[STATUS_NATTS];
    bool nulls[STATUS_NATTS];
    memset(nulls, 1, sizeof nulls);
    memset(values, 0, sizeof values);
    auto set = [&](StatusColumn i, Datum d) {
        values[i] = d;
        nulls[i] = false;
    };

    if (!shared) {
        set(STATUS_STATE, CStringGetTextDatum("not loaded"));
        ereport(NOTICE, (errmsg("bunce is not in shared_preload_libraries, so no events are delivered"),
                         errhint("Add bunce to shared_preload_libraries and restart the server.")));
        PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
    }

    // This database's worker. A database bunce.database does not list has none.
    WorkerSlot *slot = slot_of_database(MyDatabaseId);
    if (!slot) {
        if (RecoveryInProgress()) {
            set(STATUS_STATE, CStringGetTextDatum("standby"));
        } else {
            set(STATUS_STATE, CStringGetTextDatum("stopped"));
            set(STATUS_PAUSED_REASON,
                CStringGetTextDatum(database_listed() ? "the launcher has not started this database's worker "
                                                        "yet (see the server log)"
                                                      : "bunce.database does not list this database"));
        }
        PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
    }
    WorkerSlot s;
    const int64 queued = copy_slot(slot, &s);

    const char *state = RecoveryInProgress() ? "standby" : state_name(s.state);
    const int64 minute = GetCurrentTimestamp() / USECS_PER_MINUTE;
    uint64 delivered_hour = 0, failed_hour = 0;
    for (int i = 0; i < 60; i++) {
        if (s.bucket_minute[i] > minute - 60) {
            delivered_hour += s.bucket_delivered[i];
            failed_hour += s.bucket_failed[i];
        }
    }
    const bool alive = s.pid != 0;
    set(STATUS_STATE, CStringGetTextDatum(state));
    if (alive) set(STATUS_PID, Int32GetDatum(s.pid));
    if (s.state == WORKER_PAUSED || s.state == WORKER_DISABLED || s.state == WORKER_WAITING_EXTENSION ||
        (s.state == WORKER_STOPPED && s.paused_reason[0])) {
        set(STATUS_PAUSED_REASON, CStringGetTextDatum(s.paused_reason));
        if (s.paused_until) set(STATUS_PAUSED_UNTIL, TimestampTzGetDatum(s.paused_until));
    }
    if (alive) {
        set(STATUS_QUEUED, Int64GetDatum(queued));
        set(STATUS_IN_FLIGHT, Int32GetDatum(s.in_flight));
        set(STATUS_WAITING_RETRY, Int64GetDatum(s.waiting_retry));
        set(STATUS_WAITING_TURN, Int64GetDatum(s.waiting_turn));
    }
    set(STATUS_DELIVERED, Int64GetDatum(s.delivered));
    set(STATUS_FAILED, Int64GetDatum(s.failed));
    set(STATUS_POSSIBLY_DUPLICATED, Int64GetDatum(s.possibly_duplicated));
    set(STATUS_DELIVERED_LAST_HOUR, Int64GetDatum(delivered_hour));
    set(STATUS_FAILED_LAST_HOUR, Int64GetDatum(failed_hour));
    set(STATUS_REQUESTS_LAST_MINUTE, Int32GetDatum(s.requests_last_minute));
    if (s.last_success_at) set(STATUS_LAST_SUCCESS_AT, TimestampTzGetDatum(s.last_success_at));
    if (s.last_error_at) {
        if (s.last_error_status) set(STATUS_LAST_ERROR_STATUS, Int32GetDatum(s.last_error_status));
        set(STATUS_LAST_ERROR, CStringGetTextDatum(s.last_error));
        set(STATUS_LAST_ERROR_AT, TimestampTzGetDatum(s.last_error_at));
    }
    if (s.started_at) set(STATUS_STARTED_AT, TimestampTzGetDatum(s.started_at));
    if (s.catalog_synced_at) {
        set(STATUS_CATALOG_SYNCED_AT, TimestampTzGetDatum(s.catalog_synced_at));
        set(STATUS_CATALOG_EVENTS, Int32GetDatum(s.catalog_events));
    }
    if (s.catalog_error[0]) set(STATUS_CATALOG_ERROR, CStringGetTextDatum(s.catalog_error));
    PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

}  // namespace
}  // namespace bunce_pg

void _PG_init(void) {
    if (IsBinaryUpgrade) return;
    bunce_pg::define_gucs();
    bunce_pg::register_commit_hooks();
    if (!process_shared_preload_libraries_in_progress) return;  // no worker, enqueue only
    bunce_pg::install_shmem_hooks();
    bunce_pg::register_launcher();
}

Datum bunce_worker_state(PG_FUNCTION_ARGS) { return bunce_pg::worker_state_row(fcinfo); }
