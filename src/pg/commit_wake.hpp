// Waking the worker at commit (commit_wake.cpp): each transaction counts what it enqueued,
// and at commit the count goes to shared memory and the worker's latch is set.
#pragma once

extern "C" {
#include "postgres.h"
}

namespace bunce_pg {

// The transaction callbacks and the utility hook; from _PG_init.
void register_commit_hooks();
// Counts events enqueued by the current transaction.
void note_enqueued(int64 n);

}  // namespace bunce_pg
