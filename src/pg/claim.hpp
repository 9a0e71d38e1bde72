// The claim (claim.cpp): which events go out now, and where new ones wait for their turn.
// The worker calls claim() directly; bunce.claim() is the same code as a function, for the
// tests and for anyone who wants to see what a claim does.
#pragma once

extern "C" {
#include "postgres.h"
#include "access/transam.h"
#include "utils/snapshot.h"
}

namespace bunce_pg {

struct ClaimRequest {
    int max_events;  // events to send at most
    int64 after_id;  // every new row up to this id is placed already
    bool ordered;    // bunce.ordering = customer
    // Transactions that held ids when the caller last looked (see worker_sql.cpp): once one
    // has ended, new rows are looked for from its first id too.
    int n_open;
    const FullTransactionId *open_xids;
    const int64 *open_firsts;
};

// An event to send now, or a new one parked behind an earlier event of its key (then payload
// is 0). The Datums live until the caller's SPI connection ends.
struct ClaimedRow {
    int64 id;
    int attempts;
    Datum event_id;  // uuid
    Datum payload;   // jsonb, possibly compressed or in TOAST
    Datum idempotency_key;
    bool parked;
};
using ClaimSink = void (*)(const ClaimedRow &row, void *arg);

// Whether the transaction has ended as `snap` sees it (one more than 2^31 transactions back
// has, whatever its 32-bit xid says now).
bool transaction_ended(FullTransactionId xid, Snapshot snap);

// Claims due events and places new rows in id order, calling `sink` for each; inside a
// transaction with SPI connected. Returns the id up to which every new row was placed:
// PG_INT64_MAX when every new row seen was.
int64 claim(const ClaimRequest &request, ClaimSink sink, void *arg);

}  // namespace bunce_pg
