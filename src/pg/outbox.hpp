// The outbox writer (outbox.cpp): a direct heap insert with index maintenance into
// bunce.outbox, as COPY does: no SPI, no plan, no per-call parsing. The caller's privileges
// are not checked on bunce.outbox: the right to enqueue is EXECUTE on bunce_trigger.
#pragma once

extern "C" {
#include "postgres.h"
#include "access/heapam.h"
#include "nodes/execnodes.h"
#include "utils/rel.h"
}

namespace bunce_pg {

// The columns the writer fills; found by name in the table (outbox_columns in outbox.cpp).
enum OutboxColumn {
    COL_ID,
    COL_EVENT_ID,
    COL_PAYLOAD,
    COL_IDEMPOTENCY_KEY,
    COL_ENQUEUED_AT,
    COL_NEXT_ATTEMPT_AT,
    COL_ATTEMPTS,
    COL_SENDING_SINCE,
    COL_FIRST_ATTEMPT_AT,
    COL_LAST_STATUS,
    COL_LAST_ERROR,
    COL_POSSIBLE_DUPLICATE,
    COL_ORDERING_KEY,
    COL_SCHEDULED,
    OUTBOX_NATTS
};

struct OutboxWriter {
    Relation rel;
    Oid seq;
    int column[OUTBOX_NATTS];  // index into the table's attributes, or -1 when absent
    int ndefaults;             // other columns, filled from their defaults:
    int *default_index;
    ExprState **default_expr;
    EState *estate;
    ResultRelInfo *rri;
    TupleTableSlot *slot;
    BulkInsertState bistate;  // bulk (statement-level) writes only, and then:
    TupleTableSlot **batch;   // rows waiting for one table_multi_insert, as COPY does
    int nbatch;
    MemoryContext cxt;  // the batch's slots live here, not in the caller's per-row memory
};

// The bunce schema; an ERROR when the extension is not installed here.
Oid bunce_namespace();
// ERRORs unless bunce.database lists this database.
void check_served_database();
// Whether bunce.database names the current database.
bool database_listed();
// ERRORs in a read-only transaction or on a standby; `what` names the caller in the hint.
void check_writable(const char *what);

// Ids per block: bunce.event_id_seq's increment (refused otherwise, see next_event_id).
constexpr int kIdBlock = 64;

// The next event id of this transaction: ids come from bunce.event_id_seq in blocks of
// kIdBlock (its increment), each used within one transaction, so that an event enqueued by a
// transaction that began after another committed has the larger id. The transaction is
// published as holding ids (shmem.hpp, IdHolder) before it takes its first block.
int64 next_event_id(Oid seq);
// At the end of the transaction (prepared: at PREPARE TRANSACTION, whose transaction goes on
// holding its ids): this backend holds none any more.
void release_ids(bool prepared);

// A writer of its own, for one statement's rows (bulk: batched as COPY does).
void outbox_open(OutboxWriter *w, bool bulk);
// Writes one event; returns its id. Counts it for the wake-up at commit.
int64 outbox_insert(OutboxWriter *w, Datum event_id, Datum payload);
void outbox_close(OutboxWriter *w);

// The writer for single rows, shared by the calls of one command (see outbox.cpp).
OutboxWriter *single_row_writer();
// Before commit and before utility commands.
void close_row_writer();
// After an abort, which has released its relations already.
void forget_row_writer();

}  // namespace bunce_pg
