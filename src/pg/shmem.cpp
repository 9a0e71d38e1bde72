// The shared memory segment: one Shared struct, made at server start.
#include <cstring>
#include <cstddef>
#include <new>

#include "shmem.hpp"

extern "C" {
#include "access/twophase.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
}

namespace bunce_pg {

Shared *shared = nullptr;
WorkerSlot *my_slot = nullptr;
int my_slot_index = -1;
IdHolder *id_holders = nullptr;
int n_backend_holders = 0, n_prepared_holders = 0;

namespace {

shmem_request_hook_type prev_shmem_request_hook = nullptr;
shmem_startup_hook_type prev_shmem_startup_hook = nullptr;

void shmem_request() {
    if (prev_shmem_request_hook) prev_shmem_request_hook();
    RequestAddinShmemSpace(MAXALIGN(sizeof(Shared)));
    RequestAddinShmemSpace(MAXALIGN(sizeof(IdHolder) * (MaxBackends + max_prepared_xacts)));
}

void shmem_startup() {
    if (prev_shmem_startup_hook) prev_shmem_startup_hook();
    LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
    bool found;
    shared = static_cast<Shared *>(ShmemInitStruct("bunce", sizeof(Shared), &found));
    if (!found) {
        memset(static_cast<void *>(shared), 0, sizeof(Shared));
        SpinLockInit(&shared->mutex);
        new (&shared->limiter) bunce::RateLimiter();
        pg_atomic_init_u64(&shared->catalog_generation, 0);
        for (WorkerSlot &w : shared->workers) {
            SpinLockInit(&w.mutex);
            pg_atomic_init_u32(&w.database_id, InvalidOid);
            pg_atomic_init_u64(&w.committed, 0);
            pg_atomic_init_u32(&w.work_signalled, 0);
            ConditionVariableInit(&w.catalog_cv);
            w.state = WORKER_STOPPED;
        }
    }
    n_backend_holders = MaxBackends;
    n_prepared_holders = max_prepared_xacts;
    const Size holders = sizeof(IdHolder) * (n_backend_holders + n_prepared_holders);
    id_holders = static_cast<IdHolder *>(ShmemInitStruct("bunce id holders", holders, &found));
    if (!found) {
        memset(id_holders, 0, holders);
        for (int i = 0; i < n_backend_holders + n_prepared_holders; i++) pg_atomic_init_u64(&id_holders[i].first, 0);
    }
    LWLockRelease(AddinShmemInitLock);
}

}  // namespace

// A backend may still be looking at the slot it found a moment ago: the slot is emptied under
// its lock, never re-initialised.
void init_slot(WorkerSlot *slot, Oid database, const char *name) {
    constexpr size_t kFrom = offsetof(WorkerSlot, database);
    pg_atomic_write_u32(&slot->database_id, InvalidOid);
    SpinLockAcquire(&slot->mutex);
    memset(reinterpret_cast<char *>(slot) + kFrom, 0, sizeof *slot - kFrom);
    slot->state = WORKER_STOPPED;
    strlcpy(slot->database, name, sizeof slot->database);
    SpinLockRelease(&slot->mutex);
    pg_atomic_write_u64(&slot->committed, 0);
    pg_atomic_write_u32(&slot->work_signalled, 0);
    pg_write_barrier();
    pg_atomic_write_u32(&slot->database_id, database);
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

WorkerSlot *slot_of_database(Oid database) {
    if (!shared || !OidIsValid(database)) return nullptr;
    for (WorkerSlot &w : shared->workers)
        if (pg_atomic_read_u32(&w.database_id) == database) return &w;
    return nullptr;
}

int64 copy_slot(WorkerSlot *slot, WorkerSlot *copy) {
    SpinLockAcquire(&slot->mutex);
    memcpy(copy, slot, sizeof *copy);
    SpinLockRelease(&slot->mutex);
    const uint64 committed = pg_atomic_read_u64(&slot->committed);
    return Max(0, copy->queued_base + static_cast<int64>(committed - copy->committed_at_base));
}

void install_shmem_hooks() {
    prev_shmem_request_hook = shmem_request_hook;
    shmem_request_hook = shmem_request;
    prev_shmem_startup_hook = shmem_startup_hook;
    shmem_startup_hook = shmem_startup;
}

}  // namespace bunce_pg
