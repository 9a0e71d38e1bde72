// The launcher: one delivery worker per database of bunce.database. It gives each database a
// slot in shared memory, starts its worker (a dynamic background worker), starts it again a
// second after it stops, and stops it when the database leaves the list (on reload). It runs
// on the primary only, as its workers do, and is connected to no database: it reads only
// pg_database, a shared catalog.
#include <cstring>

#include "settings.hpp"
#include "shmem.hpp"
#include "worker.hpp"

extern "C" {
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PGDLLEXPORT void bunce_launcher_main(Datum);
}

namespace bunce_pg {

namespace {

constexpr long kRestartMs = 1000;  // a worker that stopped starts again after this
constexpr long kRecheckMs = 5000;  // databases that do not exist, workers that could not start

// What the launcher knows of each slot's worker (the slot's index is the same).
struct Served {
    BackgroundWorkerHandle *handle;  // nullptr: not started (or its stop was seen)
    bool stopping;                   // told to stop: its database left the list
    TimestampTz start_at;            // when to start it (again)
    bool warned_no_room;             // "no background worker slot" logged since it last started
};
Served served[kMaxDatabases];

// Databases of the list that cannot be served (missing, no connections allowed, templates), each
// logged once while it stays so.
char unusable[kMaxDatabases][NAMEDATALEN];
int n_unusable = 0;

bool running(const Served &s) {
    pid_t pid;
    return s.handle && GetBackgroundWorkerPid(s.handle, &pid) != BGWH_STOPPED;
}

// On the way out (an ERROR, pg_terminate_backend): the workers go too, so that the next
// launcher starts from free slots.
void launcher_exit(int, Datum) {
    for (Served &s : served)
        if (s.handle) TerminateBackgroundWorker(s.handle);
    SpinLockAcquire(&shared->mutex);
    shared->launcher_latch = nullptr;
    SpinLockRelease(&shared->mutex);
}

// The databases the list names, with their oids (InvalidOid for those that cannot be served).
// A heap scan of pg_database, as the logical replication launcher reads pg_subscription: a
// process of no database may not build the relcache entries of its indexes.
void resolve(const DatabaseList &list, Oid *oids) {
    const char *problem[kMaxDatabases];
    for (int i = 0; i < list.count; i++) {
        oids[i] = InvalidOid;
        problem[i] = "does not exist";
    }
    StartTransactionCommand();
    (void)GetTransactionSnapshot();
    Relation rel = table_open(DatabaseRelationId, AccessShareLock);
    TableScanDesc scan = table_beginscan_catalog(rel, 0, nullptr);
    for (HeapTuple tup; (tup = heap_getnext(scan, ForwardScanDirection)) != nullptr;) {
        auto *db = reinterpret_cast<Form_pg_database>(GETSTRUCT(tup));
        for (int i = 0; i < list.count; i++) {
            if (strcmp(NameStr(db->datname), list.names[i]) != 0) continue;
            oids[i] = db->oid;
            // A worker connected to a template would make CREATE DATABASE fail for everyone.
            problem[i] = db->datistemplate   ? "is a template"
                         : !db->datallowconn ? "does not allow connections"
                                             : nullptr;
        }
    }
    table_endscan(scan);
    table_close(rel, AccessShareLock);
    CommitTransactionCommand();

    int now_unusable = 0;
    char seen[kMaxDatabases][NAMEDATALEN];
    for (int i = 0; i < list.count; i++) {
        if (!problem[i]) continue;
        const char *name = list.names[i];
        const bool missing = !OidIsValid(oids[i]);
        oids[i] = InvalidOid;
        bool logged = false;
        for (int j = 0; j < n_unusable && !logged; j++) logged = strcmp(unusable[j], name) == 0;
        if (!logged)
            ereport(WARNING,
                    (errmsg("bunce launcher: database \"%s\" of bunce.database %s, so its events are not delivered",
                            name, problem[i]),
                     missing ? errhint("Create it, or remove it from bunce.database and reload.")
                             : errhint("Remove it from bunce.database and reload.")));
        strlcpy(seen[now_unusable++], name, NAMEDATALEN);
    }
    memcpy(unusable, seen, sizeof(seen[0]) * now_unusable);
    n_unusable = now_unusable;
}

void start(int i, WorkerSlot *slot, TimestampTz now) {
    Served &s = served[i];
    const Oid db = pg_atomic_read_u32(&slot->database_id);
    BackgroundWorker w;
    memset(&w, 0, sizeof w);
    w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
    w.bgw_start_time = BgWorkerStart_RecoveryFinished;
    w.bgw_restart_time = BGW_NEVER_RESTART;  // the launcher starts it again
    strlcpy(w.bgw_library_name, "bunce", BGW_MAXLEN);
    strlcpy(w.bgw_function_name, "bunce_worker_main", BGW_MAXLEN);
    snprintf(w.bgw_name, BGW_MAXLEN, "bunce worker for database %s", slot->database);
    strlcpy(w.bgw_type, "bunce worker", BGW_MAXLEN);
    const WorkerArg arg{i, db};
    memcpy(w.bgw_extra, &arg, sizeof arg);
    w.bgw_notify_pid = MyProcPid;
    MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);  // the handle lives on
    const bool registered = RegisterDynamicBackgroundWorker(&w, &s.handle);
    MemoryContextSwitchTo(old);
    if (registered) {
        s.warned_no_room = false;
        return;
    }
    s.handle = nullptr;
    s.start_at = now + kRecheckMs * 1000;
    SpinLockAcquire(&slot->mutex);
    strlcpy(slot->paused_reason, "no background worker slot is free (max_worker_processes)",
            sizeof slot->paused_reason);
    SpinLockRelease(&slot->mutex);
    if (s.warned_no_room) return;
    s.warned_no_room = true;
    ereport(
        WARNING,
        (errmsg("bunce launcher: no background worker slot is free for the worker of database \"%s\"", slot->database),
         errhint("Raise max_worker_processes (it takes a restart): bunce needs one for its launcher and one per "
                 "database of bunce.database, besides parallel query and other extensions.")));
}

// Brings the workers in line with the list: the databases that left it (or were dropped, or
// renamed) are stopped and their slots freed once their workers have gone; each new one gets a
// slot; every listed database whose worker is not running has it started, a second after it
// stopped. Returns how long until something is due.
long sync_workers(const DatabaseList &list) {
    Oid oids[kMaxDatabases];
    resolve(list, oids);
    const int n_oids = list.count;
    const TimestampTz now = GetCurrentTimestamp();
    long wait_ms = kRecheckMs;
    auto due_in = [&](TimestampTz at) { wait_ms = Min(wait_ms, Max(0L, static_cast<long>((at - now) / 1000))); };
    // Stops and frees.
    for (int i = 0; i < kMaxDatabases; i++) {
        WorkerSlot *slot = &shared->workers[i];
        const Oid db = pg_atomic_read_u32(&slot->database_id);
        if (!OidIsValid(db)) continue;
        bool listed = false;
        for (int j = 0; j < n_oids && !listed; j++) listed = oids[j] == db;
        Served &s = served[i];
        if (listed) continue;
        if (running(s)) {
            if (!s.stopping) {
                ereport(LOG, (errmsg("bunce launcher: stopping the worker of database \"%s\": bunce.database no "
                                     "longer lists it",
                                     slot->database)));
                TerminateBackgroundWorker(s.handle);
                s.stopping = true;
            }
            continue;
        }
        // A worker of an earlier launcher may still be finishing.
        SpinLockAcquire(&slot->mutex);
        const bool gone = slot->pid == 0;
        SpinLockRelease(&slot->mutex);
        if (!gone) {
            due_in(now + kRestartMs * 1000);
            continue;
        }
        if (s.handle) pfree(s.handle);
        s = Served{};
        init_slot(slot, InvalidOid, "");
    }
    // Slots for new databases, and starts.
    for (int j = 0; j < n_oids; j++) {
        if (!OidIsValid(oids[j])) continue;
        int i = 0;
        while (i < kMaxDatabases && pg_atomic_read_u32(&shared->workers[i].database_id) != oids[j]) i++;
        if (i == kMaxDatabases) {
            i = 0;
            while (i < kMaxDatabases && OidIsValid(pg_atomic_read_u32(&shared->workers[i].database_id))) i++;
            if (i == kMaxDatabases) {  // all taken, some by databases still stopping
                due_in(now + kRestartMs * 1000);
                continue;
            }
            served[i] = Served{};
            init_slot(&shared->workers[i], oids[j], list.names[j]);
        }
        Served &s = served[i];
        if (running(s)) continue;
        if (s.handle) {  // it stopped: again in a second
            pfree(s.handle);
            s.handle = nullptr;
            s.stopping = false;
            s.start_at = now + kRestartMs * 1000;
        }
        SpinLockAcquire(&shared->workers[i].mutex);
        const bool gone = shared->workers[i].pid == 0;  // (a worker of an earlier launcher)
        SpinLockRelease(&shared->workers[i].mutex);
        if (gone && s.start_at <= now) start(i, &shared->workers[i], now);
        if (!s.handle) due_in(Max(s.start_at, now + (gone ? 0 : kRestartMs * 1000)));
    }
    return wait_ms;
}

}  // namespace

void register_launcher() {
    BackgroundWorker w;
    memset(&w, 0, sizeof w);
    w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
    // Not in recovery: a standby sends nothing; delivery starts on promotion.
    w.bgw_start_time = BgWorkerStart_RecoveryFinished;
    w.bgw_restart_time = 1;
    strlcpy(w.bgw_library_name, "bunce", BGW_MAXLEN);
    strlcpy(w.bgw_function_name, "bunce_launcher_main", BGW_MAXLEN);
    strlcpy(w.bgw_name, "bunce launcher", BGW_MAXLEN);
    strlcpy(w.bgw_type, "bunce launcher", BGW_MAXLEN);
    RegisterBackgroundWorker(&w);
}

void launcher_main() {
    pqsignal(SIGHUP, SignalHandlerForConfigReload);
    pqsignal(SIGTERM, die);
    BackgroundWorkerUnblockSignals();
    BackgroundWorkerInitializeConnection(nullptr, nullptr, 0);
    before_shmem_exit(launcher_exit, 0);
    SpinLockAcquire(&shared->mutex);
    shared->launcher_latch = MyLatch;
    SpinLockRelease(&shared->mutex);
    for (;;) {
        CHECK_FOR_INTERRUPTS();
        if (ConfigReloadPending) {
            ConfigReloadPending = false;
            ProcessConfigFile(PGC_SIGHUP);
        }
        // Each round looks the names up again (a few rows of pg_database): a database created,
        // dropped or renamed meanwhile is seen at the latest after kRecheckMs.
        DatabaseList list;
        char problem[256];
        // The check hook refused what does not parse; this is what it accepted.
        if (!parse_databases(database, &list, problem, sizeof problem)) list.count = 0;
        const long wait_ms = sync_workers(list);
        (void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, Max(wait_ms, 10L), PG_WAIT_EXTENSION);
        ResetLatch(MyLatch);
    }
}

}  // namespace bunce_pg

void bunce_launcher_main(Datum) { bunce_pg::launcher_main(); }
