// Shared memory (shmem.cpp): the workers of the databases served, how backends wake them,
// what bunce.status shows, and the rate limit they share. Null when bunce is not in
// shared_preload_libraries (then there is no worker).
#pragma once

#include "metrics.hpp"
#include "rate_limiter.hpp"
#include "settings.hpp"

extern "C" {
#include "postgres.h"
#include "datatype/timestamp.h"
#include "access/transam.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/condition_variable.h"
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

// One database served: its worker and what bunce.status shows there. The launcher gives a
// slot to each database of bunce.database and takes it back when the database leaves the list.
struct WorkerSlot {
    slock_t mutex;                    // protects everything below that is not atomic
    pg_atomic_uint32 database_id;     // InvalidOid: the slot is free (written by the launcher)
    pg_atomic_uint64 committed;       // events enqueued by committed transactions, ever
    pg_atomic_uint32 work_signalled;  // 1: the worker was told of new work and has not claimed since
    ConditionVariable catalog_cv;     // broadcast when a catalog sync ends
    // From here on: emptied when the slot is given to a database (init_slot).
    char database[NAMEDATALEN];
    Latch *worker_latch;  // set while the worker runs
    int pid;
    WorkerState state;
    char pause_kind[24];  // bunce_paused's reason label: key_refused, rate_limited, disabled, ...
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
    uint64 answers[bunce::kAnswerClasses];  // by AnswerClass
    // enqueue to 2xx: events per bucket (not cumulative), and their sum
    uint64 latency_buckets[bunce::kLatencyBuckets];
    double latency_sum_s;
    // The event catalog: bunce.refresh_events() raises catalog_asked and waits until
    // catalog_done reaches it (the number asked when the sync that ended began).
    uint64 catalog_asked;
    uint64 catalog_done;
    bool catalog_failed;            // the last sync that ended failed (catalog_error says why)
    TimestampTz catalog_synced_at;  // of the last good sync
    int catalog_events;
    char catalog_error[256];  // of the last sync that failed, kept until one succeeds
};

static_assert(kMaxDatabases <= bunce::RateLimiter::kMaxSenders, "a limiter turn for each database's worker");

struct Shared {
    slock_t mutex;  // protects the limiter, the launcher's latch and the prepared id holders
    Latch *launcher_latch;
    bunce::RateLimiter limiter;           // bunce.rate_limit, for the whole cluster (Bunce limits per IP)
    pg_atomic_uint64 catalog_generation;  // raised after each catalog sync, in any database
    WorkerSlot workers[kMaxDatabases];
};
extern Shared *shared;
extern WorkerSlot *my_slot;  // in a worker: the slot of its database
extern int my_slot_index;

// As bunce.status shows it.
const char *state_name(WorkerState s);

// The slot of a database, or nullptr when it is not served.
WorkerSlot *slot_of_database(Oid database);
// A consistent copy of a slot, and its queue size: the worker's last count plus the commits
// since (approximate between counts, every 5 s), never below zero.
int64 copy_slot(WorkerSlot *slot, WorkerSlot *copy);
// Gives a free slot to a database, emptied (the launcher, before the worker starts); InvalidOid
// frees it.
void init_slot(WorkerSlot *slot, Oid database, const char *name);

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
