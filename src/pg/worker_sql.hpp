// All of the worker's SQL (worker_sql.cpp): its transactions, the claim, recording answers,
// recovery of claims, counting and pruning. Every statement is schema-qualified and runs
// with the session settings the worker pinned.
#pragma once

#include <csignal>

#include "sender.hpp"

extern "C" {
#include "postgres.h"
#include "datatype/timestamp.h"
#include "nodes/pg_list.h"
}

namespace bunce_pg {

// True between begin() and end(): SIGTERM then ends the worker at the next interrupt check.
extern volatile sig_atomic_t in_transaction;

// A short transaction with a snapshot and SPI; `activity` is shown in pg_stat_activity.
void begin(const char *activity);
void end();
// NOTIFY bunce with these payloads (char *), in a transaction of its own; outside a transaction.
void notify(List *payloads);
// The notifications of the dead letters recorded by the last transaction; after end().
void send_notifications();

// Whether extension bunce is installed here at a version whose schema this library knows, and
// is the one delivery started for; otherwise why not.
enum ExtensionCheck { EXTENSION_MISSING, EXTENSION_OTHER_VERSION, EXTENSION_REPLACED, EXTENSION_READY };
ExtensionCheck check_extension(char *why, size_t size);
// Once the extension is usable (after a start, or after it was created again): prepares the
// statements, releases the claims left behind (see note_claims_abandoned) and counts the
// queue.
void start_delivering();
// Claims made before the worker's start were left behind by a crash or a stop; so were the
// ones this worker had when it abandoned its requests (the extension changed), made before
// this call. Claims made since (by hand, with bunce.claim()) are not released at start.
void note_claims_abandoned();
// When it is not: the next start_delivering() may be for another extension.
void stop_delivering();

struct Recorded {
    int delivered;             // removed after a 2xx
    int dead;                  // became dead letters
    int retried;               // back in the queue
    int promoted;              // events whose turn came (an earlier event of their key left)
    const Answer *last_error;  // the last answer that was not a success, or nullptr
    // time from enqueue to the 2xx of those delivered: events per bucket, and their sum
    int latency_buckets[bunce::kLatencyBuckets];
    double latency_sum_s;
};
Recorded record_answers(const Answer *answers, int n);

struct Claimed {
    int staged;          // requests staged in the sender
    int oversize;        // payloads over bunce.max_payload_size, dead letters at once
    bool more;           // more may be due at once
    int promoted;        // events whose turn came (see Recorded)
    bool unknown_event;  // an event the catalog does not have was staged
};
// Claims up to `limit` due events (bunce.claim), places new ones, and stages the requests.
Claimed claim_events(int limit);

// The earliest next_attempt_at of an unclaimed event, 0 when none.
TimestampTz next_due();
// Unclaimed events waiting for a retry.
int64 count_waiting_retry();
// Makes claims due again that no request of this worker holds (see worker_sql.cpp).
void release_claims(bool all);
// Claims of events that were staged but never sent: back as they were (not possible duplicates).
// It never waits for a lock (a row locked by someone else stays claimed).
void release_unsent(Datum ids);
// Makes parked events due whose key has nothing scheduled before them (see worker_sql.cpp).
void release_turns();
// Warns when a subscription could apply other databases' events here (see worker_sql.cpp).
void check_replica_triggers();
// Counts the queue for bunce.status.
void recount_queue();
// Replaces the event catalog (bunce.events) by these events (sender_catalog_json), in a
// transaction of its own; returns their number, or -1 with *error filled in.
int store_catalog(const char *events_json, char *error, size_t error_size);
// Deletes old rows of bunce.deliveries, at most every minute; 5000 at a time.
void prune_deliveries(TimestampTz now);

}  // namespace bunce_pg
