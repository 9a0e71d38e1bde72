// The shared memory segment: one Shared struct, made at server start.
#include <cstring>

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
        memset(shared, 0, sizeof(Shared));
        SpinLockInit(&shared->mutex);
        pg_atomic_init_u64(&shared->committed, 0);
        pg_atomic_init_u32(&shared->work_signalled, 0);
        shared->state = WORKER_STOPPED;
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

void install_shmem_hooks() {
    prev_shmem_request_hook = shmem_request_hook;
    shmem_request_hook = shmem_request;
    prev_shmem_startup_hook = shmem_startup_hook;
    shmem_startup_hook = shmem_startup;
}

}  // namespace bunce_pg
