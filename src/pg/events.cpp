// bunce.refresh_events(): asks this database's worker to sync the event catalog now and waits
// for the sync to end. The caller's backend makes no HTTP request of its own.
#include "outbox.hpp"
#include "shmem.hpp"

extern "C" {
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/timestamp.h"

PGDLLEXPORT Datum bunce_refresh_events(PG_FUNCTION_ARGS);
PG_FUNCTION_INFO_V1(bunce_refresh_events);
}

namespace bunce_pg {
namespace {

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

}  // namespace
}  // namespace bunce_pg

Datum bunce_refresh_events(PG_FUNCTION_ARGS) { return bunce_pg::refresh_events(fcinfo); }
