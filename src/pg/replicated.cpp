// Logical replication: bunce's tables are published with the others (FOR ALL TABLES), but an
// event is sent by the database where it was enqueued only. On a subscriber, the changes that
// the apply worker brings to bunce.outbox, bunce.dead_letters and bunce.deliveries are dropped
// (a trigger enabled for replica sessions only: PostgreSQL's own sessions never fire it, and
// bunce writes its outbox without triggers). Else the subscriber would send the publisher's
// events a second time, and the publisher's deletes of its delivered events, by id, would
// delete the subscriber's own events of the same ids.
#include "enqueue.hpp"

extern "C" {
#include "postgres.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "replication/origin.h"
#include "replication/worker_internal.h"

PGDLLEXPORT Datum bunce_ignore_replicated(PG_FUNCTION_ARGS);
PG_FUNCTION_INFO_V1(bunce_ignore_replicated);
}

namespace bunce_pg {
namespace {

Datum ignore_replicated(FunctionCallInfo fcinfo) {
    if (!CALLED_AS_TRIGGER(fcinfo) ||
        !TRIGGER_FIRED_BEFORE(reinterpret_cast<TriggerData *>(fcinfo->context)->tg_event) ||
        !TRIGGER_FIRED_FOR_ROW(reinterpret_cast<TriggerData *>(fcinfo->context)->tg_event))
        ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
                        errmsg("bunce.ignore_replicated() must be a BEFORE ROW trigger")));
    auto *trigdata = reinterpret_cast<TriggerData *>(fcinfo->context);
    // A change applied by a subscription (PostgreSQL's apply or table sync worker, or any
    // replication tool that sets a replication origin) is dropped; not a dead letter that
    // bunce_trigger writes in such a session (a trigger of the subscriber's own that fires
    // for replicated rows).
    if ((MyLogicalRepWorker != nullptr || replorigin_session_origin != InvalidRepOriginId) && !writing_dead_letter())
        return PointerGetDatum(nullptr);
    return PointerGetDatum(TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? trigdata->tg_newtuple
                                                                       : trigdata->tg_trigtuple);
}

}  // namespace
}  // namespace bunce_pg

Datum bunce_ignore_replicated(PG_FUNCTION_ARGS) { return bunce_pg::ignore_replicated(fcinfo); }
