// Shared memory (shmem.cpp): how backends wake the worker, and what bunce.status shows.
// Null when bunce is not in shared_preload_libraries (then there is no worker).
#pragma once

extern "C" {
#include "postgres.h"
#include "datatype/timestamp.h"
#include "access/transam.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/spin.h"
}

namespace bunce_pg {

enum WorkerState {
    WORKER_STOPPED,
    WORKER_STARTING,
    WORKER_WAITING_EXTENSION,
    WORKER_RUNNING,
    WORKER_PAUSED,
    WORKER_DISABLED
};

struct Shared {
    slock_t mutex;                    // protects everything below that is not atomic
    Latch *worker_latch;              // set while the worker runs
    Oid database_id;                  // the database the worker serves, once it has connected
    pg_atomic_uint64 committed;       // events enqueued by committed transactions, ever
    pg_atomic_uint32 work_signalled;  // 1: the worker was told of new work and has not claimed since
    int pid;
    WorkerState state;
    char paused_reason[128];
    TimestampTz paused_until;
    TimestampTz started_at;
    // queue size = queued_base + (committed - committed_at_base)
    int64 queued_base;
    uint64 committed_at_base;
    int64 waiting_retry;
    int64 waiting_turn;  // parked behind an earlier event of their key
    int in_flight;
    uint64 delivered;
    uint64 failed;  // dead-lettered by the worker
    uint64 possibly_duplicated;
    // per-minute buckets for the last hour: minute number and counts
    int64 bucket_minute[60];
    uint64 bucket_delivered[60];
    uint64 bucket_failed[60];
    int requests_last_minute;
    TimestampTz last_success_at;
    int last_error_status;
    char last_error[256];
    TimestampTz last_error_at;
};
extern Shared *shared;

// Which transactions hold event ids they may still commit (see worker_sql.cpp, "new rows"):
// one slot per backend, and one per prepared transaction. first is the first id of the
// transaction's first block, 0 when it holds none, kTakingIds while it takes that block.
struct IdHolder {
    pg_atomic_uint64 first;
    FullTransactionId xid;
    Oid database;
};
constexpr uint64 kTakingIds = PG_UINT64_MAX;
extern IdHolder *id_holders;  // MaxBackends of backends (by MyBackendId - 1), then prepared ones
extern int n_backend_holders, n_prepared_holders;

// Called from _PG_init while shared_preload_libraries is processed.
void install_shmem_hooks();

}  // namespace bunce_pg
