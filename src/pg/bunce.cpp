// Module entry: settings, shared memory, the worker, and the two SQL functions that read and
// poke the worker's shared state.
#include <cstring>

#include "bunce_pg.hpp"

extern "C" {
#include "access/xlog.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_MODULE_MAGIC;

void _PG_init(void);
PGDLLEXPORT Datum bunce_worker_state(PG_FUNCTION_ARGS);
PG_FUNCTION_INFO_V1(bunce_worker_state);
}

namespace bunce_pg {

Shared *shared = nullptr;

namespace {

shmem_request_hook_type prev_shmem_request_hook = nullptr;
shmem_startup_hook_type prev_shmem_startup_hook = nullptr;

void shmem_request() {
    if (prev_shmem_request_hook) prev_shmem_request_hook();
    RequestAddinShmemSpace(MAXALIGN(sizeof(Shared)));
}

void shmem_startup() {
    if (prev_shmem_startup_hook) prev_shmem_startup_hook();
    LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
    bool found;
    shared = static_cast<Shared *>(ShmemInitStruct("bunce", sizeof(Shared), &found));
    if (!found) {
        memset(shared, 0, sizeof(Shared));
        SpinLockInit(&shared->mutex);
        pg_atomic_init_u64(&shared->committed, 0);
        pg_atomic_init_u32(&shared->work_signalled, 0);
        shared->state = WORKER_STOPPED;
    }
    LWLockRelease(AddinShmemInitLock);
}

const char *state_name(WorkerState s) {
    switch (s) {
        case WORKER_STOPPED: return "stopped";
        case WORKER_STARTING: return "starting";
        case WORKER_WAITING_EXTENSION: return "waiting";
        case WORKER_RUNNING: return "running";
        case WORKER_PAUSED: return "paused";
        case WORKER_DISABLED: return "disabled";
    }
    return "unknown";
}

}  // namespace

}  // namespace bunce_pg

using namespace bunce_pg;

void _PG_init(void) {
    if (IsBinaryUpgrade) return;
    define_gucs();
    register_xact_callbacks();
    if (!process_shared_preload_libraries_in_progress) return;  // no worker, enqueue only
    prev_shmem_request_hook = shmem_request_hook;
    shmem_request_hook = shmem_request;
    prev_shmem_startup_hook = shmem_startup_hook;
    shmem_startup_hook = shmem_startup;
    register_worker();
}

// One row of worker state for bunce.status. Without shared_preload_libraries there is no
// worker: the row says so instead of failing, so that the view always answers.
Datum bunce_worker_state(PG_FUNCTION_ARGS) {
    TupleDesc tupdesc;
    if (get_call_result_type(fcinfo, nullptr, &tupdesc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "return type must be a row type");
    constexpr int natts = 18;
    Datum values[natts];
    bool nulls[natts];
    memset(nulls, 1, sizeof nulls);
    memset(values, 0, sizeof values);

    if (!shared) {
        values[0] = CStringGetTextDatum("not loaded");
        nulls[0] = false;
        ereport(NOTICE, (errmsg("bunce is not in shared_preload_libraries, so no events are delivered"),
                         errhint("Add bunce to shared_preload_libraries and restart the server.")));
        PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
    }

    Shared s;
    SpinLockAcquire(&shared->mutex);
    memcpy(&s, shared, sizeof s);
    SpinLockRelease(&shared->mutex);
    const uint64 committed = pg_atomic_read_u64(&shared->committed);

    const char *state = RecoveryInProgress() ? "standby" : state_name(s.state);
    const int64 minute = GetCurrentTimestamp() / USECS_PER_MINUTE;
    uint64 delivered_hour = 0, failed_hour = 0;
    for (int i = 0; i < 60; i++) {
        if (s.bucket_minute[i] > minute - 60) {
            delivered_hour += s.bucket_delivered[i];
            failed_hour += s.bucket_failed[i];
        }
    }
    auto set = [&](int i, Datum d) {
        values[i] = d;
        nulls[i] = false;
    };
    const bool alive = s.pid != 0;
    set(0, CStringGetTextDatum(state));
    if (alive) set(1, Int32GetDatum(s.pid));
    if (s.state == WORKER_PAUSED || s.state == WORKER_DISABLED) {
        set(2, CStringGetTextDatum(s.paused_reason));
        if (s.paused_until) set(3, TimestampTzGetDatum(s.paused_until));
    }
    if (alive) {
        // Approximate between the worker's counts (every 5 s), never below zero.
        set(4, Int64GetDatum(Max(0, s.queued_base + static_cast<int64>(committed - s.committed_at_base))));
        set(5, Int32GetDatum(s.in_flight));
        set(6, Int64GetDatum(s.waiting_retry));
    }
    set(7, Int64GetDatum(s.delivered));
    set(8, Int64GetDatum(s.failed));
    set(9, Int64GetDatum(s.possibly_duplicated));
    set(10, Int64GetDatum(delivered_hour));
    set(11, Int64GetDatum(failed_hour));
    set(12, Int32GetDatum(s.requests_last_minute));
    if (s.last_success_at) set(13, TimestampTzGetDatum(s.last_success_at));
    if (s.last_error_at) {
        if (s.last_error_status) set(14, Int32GetDatum(s.last_error_status));
        set(15, CStringGetTextDatum(s.last_error));
        set(16, TimestampTzGetDatum(s.last_error_at));
    }
    if (s.started_at) set(17, TimestampTzGetDatum(s.started_at));
    PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
