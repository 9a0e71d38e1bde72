// The launcher (launcher.cpp) and the delivery worker of each database (worker.cpp).
#pragma once

#include "shmem.hpp"

extern "C" {
#include "postmaster/bgworker.h"
}

namespace bunce_pg {

// From _PG_init while shared_preload_libraries is processed.
void register_launcher();

// What the launcher tells a worker (in bgw_extra): its slot, and the database it is for.
struct WorkerArg {
    int slot;
    Oid database;
};
static_assert(sizeof(WorkerArg) <= BGW_EXTRALEN, "fits in bgw_extra");

}  // namespace bunce_pg
