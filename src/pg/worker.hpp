// The delivery worker (worker.cpp).
#pragma once

namespace bunce_pg {

// From _PG_init while shared_preload_libraries is processed.
void register_worker();

}  // namespace bunce_pg
