// Waking the worker at commit. Each transaction counts what it enqueued (undoing what an
// aborted subtransaction enqueued); at commit the count goes to shared memory and the
// worker's latch is set, so delivery starts at once instead of at the next poll. The
// executor and utility hooks write the rows the outbox's row writer batched when the statement
// that made them ends (and let go of it before other commands); the utility hook also checks
// bunce triggers when they are created or their table is altered.
#include "commit_wake.hpp"
#include "outbox.hpp"
#include "shmem.hpp"
#include "trigger.hpp"

extern "C" {
#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "executor/executor.h"
#include "tcop/utility.h"
#include "utils/memutils.h"

PGDLLEXPORT Datum bunce_notify_enqueued(PG_FUNCTION_ARGS);
PG_FUNCTION_INFO_V1(bunce_notify_enqueued);
}

namespace bunce_pg {
namespace {

// The slot of this database's worker, looked up again only when the launcher gave it away.
WorkerSlot *served_slot() {
    static WorkerSlot *slot = nullptr;
    if (!slot || pg_atomic_read_u32(&slot->database_id) != MyDatabaseId) slot = slot_of_database(MyDatabaseId);
    return slot;
}

// Sets the worker's latch, once until its next claim: under a stream of commits a signal
// per commit would cost more than the insert itself.
void wake_worker(WorkerSlot *slot) {
    if (pg_atomic_read_u32(&slot->work_signalled) || pg_atomic_exchange_u32(&slot->work_signalled, 1)) return;
    SpinLockAcquire(&slot->mutex);
    Latch *latch = slot->worker_latch;
    SpinLockRelease(&slot->mutex);
    if (latch) SetLatch(latch);
}

int64 xact_enqueued = 0;
int64 *sub_saved = nullptr;  // xact_enqueued at the start of each open subtransaction
int sub_depth = 0;
int sub_capacity = 0;

void xact_callback(XactEvent event, void *) {
    if (event == XACT_EVENT_PRE_COMMIT || event == XACT_EVENT_PRE_PREPARE) close_row_writer();
    if (event == XACT_EVENT_PRE_PREPARE) release_ids(true);
    if (event == XACT_EVENT_ABORT) forget_row_writer();
    if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT) release_ids(false);
    if (event == XACT_EVENT_COMMIT && xact_enqueued > 0) {
        if (WorkerSlot *slot = served_slot()) {
            pg_atomic_fetch_add_u64(&slot->committed, static_cast<uint64>(xact_enqueued));
            wake_worker(slot);
        }
    }
    if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT || event == XACT_EVENT_PREPARE ||
        event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT) {
        xact_enqueued = 0;
        sub_depth = 0;
        triggers_running = 0;  // after an ERROR, calls that did not finish
    }
}

void subxact_callback(SubXactEvent event, SubTransactionId subxid, SubTransactionId parent, void *) {
    if (event == SUBXACT_EVENT_COMMIT_SUB || event == SUBXACT_EVENT_ABORT_SUB)
        end_row_writer_subxact(subxid, parent, event == SUBXACT_EVENT_COMMIT_SUB);
    if (event == SUBXACT_EVENT_START_SUB) {
        if (sub_depth == sub_capacity) {
            sub_capacity = sub_capacity ? sub_capacity * 2 : 16;
            sub_saved =
                static_cast<int64 *>(sub_saved ? repalloc(sub_saved, sizeof(int64) * sub_capacity)
                                               : MemoryContextAlloc(TopMemoryContext, sizeof(int64) * sub_capacity));
        }
        sub_saved[sub_depth++] = xact_enqueued;
    } else if (event == SUBXACT_EVENT_COMMIT_SUB && sub_depth > 0) {
        sub_depth--;
    } else if (event == SUBXACT_EVENT_ABORT_SUB && sub_depth > 0) {
        xact_enqueued = sub_saved[--sub_depth];
    }
}

ExecutorFinish_hook_type prev_executor_finish = nullptr;

// A statement's AFTER triggers fire in its ExecutorFinish: the rows they leave waiting in the
// row writer are written at its end, so that the next statement sees them.
void executor_finish(QueryDesc *query) {
    row_batch_depth++;
    PG_TRY();
    { (prev_executor_finish ? prev_executor_finish : standard_ExecutorFinish)(query); }
    PG_FINALLY();
    { row_batch_depth--; }
    PG_END_TRY();
    flush_row_writer();
}

ProcessUtility_hook_type prev_process_utility = nullptr;

// Before any utility command (TRUNCATE, DROP, ALTER, another COPY): write the row writer's
// waiting rows and let go of it (it would otherwise make a TRUNCATE or DROP of the outbox
// later in the same transaction fail as "being used by active queries in this session").
// A bunce trigger is checked when it is created, not when the business write first fires it;
// an ALTER TABLE that breaks a trigger's mapping says so.
void process_utility(PlannedStmt *pstmt, const char *query, bool read_only, ProcessUtilityContext context,
                     ParamListInfo params, QueryEnvironment *env, DestReceiver *dest, QueryCompletion *qc) {
    if (IsTransactionState()) close_row_writer();
    Node *stmt = pstmt->utilityStmt;
    if (IsA(stmt, CreateTrigStmt)) check_create_trigger(castNode(CreateTrigStmt, stmt));
    // COPY's AFTER triggers fire inside it: their waiting rows are written when it ends.
    row_batch_depth++;
    PG_TRY();
    {
        (prev_process_utility ? prev_process_utility : standard_ProcessUtility)(pstmt, query, read_only, context,
                                                                                params, env, dest, qc);
    }
    PG_FINALLY();
    { row_batch_depth--; }
    PG_END_TRY();
    if (IsTransactionState()) flush_row_writer();
    if (IsA(stmt, RenameStmt) || IsA(stmt, AlterTableStmt)) warn_broken_mappings(stmt);
}

}  // namespace

void register_commit_hooks() {
    RegisterXactCallback(xact_callback, nullptr);
    RegisterSubXactCallback(subxact_callback, nullptr);
    prev_executor_finish = ExecutorFinish_hook;
    ExecutorFinish_hook = executor_finish;
    prev_process_utility = ProcessUtility_hook;
    ProcessUtility_hook = process_utility;
}

void note_enqueued(int64 n) { xact_enqueued += n; }

}  // namespace bunce_pg

// Lets SQL code that moves events into the outbox (bunce.retry_dead_letters) count them
// and wake the worker at commit, like bunce_trigger does.
Datum bunce_notify_enqueued(PG_FUNCTION_ARGS) {
    // Called by bunce's own SECURITY DEFINER functions; anyone else could skew the counters.
    if (!superuser())
        ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                        errmsg("permission denied for function bunce.notify_enqueued"),
                        errhint("It is called by bunce.retry_dead_letters(); call that instead.")));
    bunce_pg::note_enqueued(PG_GETARG_INT64(0));
    PG_RETURN_VOID();
}
