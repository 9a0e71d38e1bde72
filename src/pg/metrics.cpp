// bunce.metrics_samples(): the samples of bunce.metrics that live in shared memory, for this
// database's worker, in Prometheus' terms (name, labels, value, type, help). The view adds
// those counted in tables (dead letters, the oldest pending event).
#include <cstdio>
#include <cstring>

#include "metrics.hpp"
#include "settings.hpp"
#include "shmem.hpp"

extern "C" {
#include "access/xlog.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/tuplestore.h"

PGDLLEXPORT Datum bunce_metrics_samples(PG_FUNCTION_ARGS);
PG_FUNCTION_INFO_V1(bunce_metrics_samples);
}

namespace bunce_pg {
namespace {

struct Output {
    ReturnSetInfo *rsinfo;
    const char *database;
};

// One sample; `label`/`value` add one label to {"database": ...} when given.
void sample(const Output &out, const char *name, const char *type, const char *help, double value,
            const char *label = nullptr, const char *label_value = nullptr) {
    StringInfoData labels;
    initStringInfo(&labels);
    appendStringInfoString(&labels, "{\"database\": ");
    escape_json(&labels, out.database);
    if (label) {
        appendStringInfo(&labels, ", \"%s\": ", label);
        escape_json(&labels, label_value);
    }
    appendStringInfoChar(&labels, '}');
    Datum values[5] = {CStringGetTextDatum(name), DirectFunctionCall1(jsonb_in, CStringGetDatum(labels.data)),
                       Float8GetDatum(value), CStringGetTextDatum(type), CStringGetTextDatum(help)};
    bool nulls[5] = {false, false, false, false, false};
    tuplestore_putvalues(out.rsinfo->setResult, out.rsinfo->setDesc, values, nulls);
}

}  // namespace
}  // namespace bunce_pg

Datum bunce_metrics_samples(PG_FUNCTION_ARGS) {
    using namespace bunce_pg;
    InitMaterializedSRF(fcinfo, 0);
    const char *db = get_database_name(MyDatabaseId);
    const Output out{reinterpret_cast<ReturnSetInfo *>(fcinfo->resultinfo), db ? db : ""};

    // A copy of this database's slot; none (all zero) without a worker.
    WorkerSlot s;
    memset(&s, 0, sizeof s);
    int64 queue = 0;
    if (WorkerSlot *slot = slot_of_database(MyDatabaseId)) queue = copy_slot(slot, &s);
    const bool up = s.pid != 0;
    const double queued = up ? static_cast<double>(queue) : 0;

    sample(out, "bunce_worker_up", "gauge", "1 while the worker of this database runs", up ? 1 : 0);
    sample(out, "bunce_in_recovery", "gauge", "1 on a standby, where no worker runs (until a promotion)",
           RecoveryInProgress() ? 1 : 0);
    const bool paused = up && s.pause_kind[0] != '\0';
    sample(out, "bunce_paused", "gauge", "1 while delivery is paused; reason says why", paused ? 1 : 0, "reason",
           paused ? s.pause_kind : "");
    sample(out, "bunce_delivered_total", "counter", "events delivered (2xx) since the server started",
           static_cast<double>(s.delivered));
    sample(out, "bunce_failed_total", "counter", "events the worker made dead letters since the server started",
           static_cast<double>(s.failed));
    sample(out, "bunce_possibly_duplicated_total", "counter",
           "events sent again after a crash or restart interrupted their request",
           static_cast<double>(s.possibly_duplicated));
    for (int c = 0; c < bunce::kAnswerClasses; c++)
        sample(out, "bunce_answers_total", "counter", "answers to requests, by class",
               static_cast<double>(s.answers[c]), "class",
               bunce::answer_class_label(static_cast<bunce::AnswerClass>(c)));
    uint64 count = 0;
    for (int b = 0; b < bunce::kLatencyBuckets; b++) {
        count += s.latency_buckets[b];
        char le[32];
        if (b < bunce::kLatencyBuckets - 1)
            snprintf(le, sizeof le, "%g", bunce::kLatencyBounds[b]);
        else
            strlcpy(le, "+Inf", sizeof le);
        sample(out, "bunce_delivery_latency_seconds_bucket", "histogram",
               "time from enqueue to the 2xx answer, delivered events", static_cast<double>(count), "le", le);
    }
    sample(out, "bunce_delivery_latency_seconds_sum", "histogram",
           "time from enqueue to the 2xx answer, delivered events", s.latency_sum_s);
    sample(out, "bunce_delivery_latency_seconds_count", "histogram",
           "time from enqueue to the 2xx answer, delivered events", static_cast<double>(count));
    const double waiting = static_cast<double>(s.waiting_retry + s.waiting_turn);
    sample(out, "bunce_queue_depth", "gauge", "events in the outbox", queued);
    sample(out, "bunce_due_now", "gauge", "events that may be sent now", Max(queued - waiting - s.in_flight, 0.0));
    sample(out, "bunce_waiting_retry", "gauge", "events waiting for a retry", static_cast<double>(s.waiting_retry));
    sample(out, "bunce_waiting_turn", "gauge", "events waiting behind an earlier event of their customer",
           static_cast<double>(s.waiting_turn));
    sample(out, "bunce_in_flight", "gauge", "requests in flight", s.in_flight);
    sample(out, "bunce_requests_last_minute", "gauge", "requests sent in the last 60 s", s.requests_last_minute);
    sample(out, "bunce_rate_limit", "gauge", "bunce.rate_limit: requests per minute, 0 = no limit", rate_limit);
    PG_RETURN_NULL();
}
