// The event catalog in a backend (event_catalog.cpp): bunce.events read into a cache, read
// again after each sync; the checks at enqueue, event names, bunce.refresh_events() and
// bunce.event_id().
#pragma once

#include "guard.hpp"

extern "C" {
#include "postgres.h"
#include "utils/uuid.h"
}

namespace bunce_pg {

// Checks a payload against the definition of its event, when the catalog has one: required
// parameters, numbers, timestamps. Returns the payload to store (timestamp parameters in
// Bunce's form), or (Datum) 0 with err filled in. Without the worker (bunce not preloaded)
// there is no catalog to check against.
Datum check_event_parameters(const pg_uuid_t *event_id, Datum payload, CoreError &err);

// Whether the catalog has this event.
bool catalog_has_event(const pg_uuid_t *event_id);

// An event's id by its name in the catalog: 0 found, 1 no such event, 2 more than one.
int event_id_by_name(const char *name, pg_uuid_t *id);

// Changes whenever bunce.events may have been synced again since.
uint64 catalog_version();

}  // namespace bunce_pg
