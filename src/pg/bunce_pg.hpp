// Declarations shared by the PostgreSQL glue files.
#pragma once

extern "C" {
#include "postgres.h"
#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/spin.h"
}

namespace bunce_pg {

// GUCs (guc.cpp).
extern char *database;
extern char *api_url;
extern int rate_limit;
extern int max_in_flight;
extern int request_timeout_ms;
extern int max_attempts;
extern bool enabled;
extern char *ca_file;
extern int delivery_log_retention_s;
enum OnInvalid { ON_INVALID_ERROR, ON_INVALID_DEAD_LETTER };
extern int on_invalid;
extern char *api_key_file;
extern char *https_proxy;
extern int max_payload_size;  // bytes of payload JSON text
void define_gucs();
// The key in use: from bunce.api_key_file when that is set (after load_api_key), else
// bunce.api_key (the GUC itself only ever holds a mask, see guc.cpp).
const char *api_key();
// (Re-)reads bunce.api_key_file; false with the reason when it cannot be used.
bool load_api_key(char *problem, size_t size);

enum WorkerState { WORKER_STOPPED, WORKER_STARTING, WORKER_WAITING_EXTENSION, WORKER_RUNNING,
                   WORKER_PAUSED, WORKER_DISABLED };

// Shared memory (shmem.cpp): how backends wake the worker, and what bunce.status shows.
struct Shared {
    slock_t mutex;                  // protects everything below that is not atomic
    Latch *worker_latch;            // set while the worker runs
    Oid database_id;                // the database the worker serves, once it has connected
    pg_atomic_uint64 committed;     // events enqueued by committed transactions, ever
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
void request_shmem();

// Counts an enqueued event; the worker is woken when the transaction commits (enqueue.cpp).
void note_enqueued();
void wake_worker();
void register_xact_callbacks();

// Background worker (worker.cpp).
void register_worker();

}  // namespace bunce_pg
