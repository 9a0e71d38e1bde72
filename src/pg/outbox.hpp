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
    BulkInsertState bistate;  // bulk (statement-level) writes only
    // Rows waiting for one table_multi_insert, as COPY does (bulk writers, and the single-row
    // writer: see outbox.cpp). At most OUTBOX_BATCH rows or about OUTBOX_BATCH_BYTES.
    TupleTableSlot **batch;
    int nbatch;
    size_t batch_bytes;
    SubTransactionId batch_subxid;  // the subtransaction that wrote them
    MemoryContext cxt;              // the batch's slots live here, not in the caller's per-row memory
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
// Writes one event; returns its id. Counts it for the wake-up at commit. `may_wait`: the row
// may wait in the writer's batch (a bulk writer's; the single-row writer's for a row trigger).
int64 outbox_insert(OutboxWriter *w, Datum event_id, Datum payload, bool may_wait);
void outbox_close(OutboxWriter *w);

// The writer for single rows, shared by the calls of one command (see outbox.cpp).
OutboxWriter *single_row_writer();
// Statements being run whose end writes the single-row writer's batch (flush_row_writer):
// ExecutorFinish, where a statement's AFTER triggers fire, and utility commands (COPY). Rows
// wait in the batch only inside one.
extern int row_batch_depth;
// Writes the rows waiting in the single-row writer, at the end of such a statement.
void flush_row_writer();
// Writes them and lets go of the writer: before commit and before utility commands.
void close_row_writer();
// At the end of subtransaction `subxid`: its waiting rows go to `parent` (committed) or are
// dropped (aborted).
void end_row_writer_subxact(SubTransactionId subxid, SubTransactionId parent, bool committed);
// After an abort, which has released its relations already; its rows are dropped.
void forget_row_writer();

}  // namespace bunce_pg
