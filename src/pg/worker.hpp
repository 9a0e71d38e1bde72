// The launcher (launcher.cpp) and the delivery worker of each database (worker.cpp).
#pragma once

#include "shmem.hpp"

namespace bunce_pg {

// From _PG_init while shared_preload_libraries is processed.
void register_launcher();

// The worker's argument: its slot, and the database it was started for.
Datum worker_arg(int slot, Oid database);

}  // namespace bunce_pg
