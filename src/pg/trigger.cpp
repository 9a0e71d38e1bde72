// The generic trigger as it fires: each row's payload as JSON text, built from the column
// types (the type-driven encoder), checked, and written to the outbox. A statement-level
// trigger writes its transition table's rows in one batch.
#include <cmath>
#include <cstring>

#include "enqueue.hpp"
#include "outbox.hpp"
#include "payload.hpp"
#include "settings.hpp"
#include "timestamp.hpp"
#include "trigger.hpp"

extern "C" {
#include "executor/executor.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(bunce_trigger_row);
}

namespace bunce_pg {
namespace {

// Why a column's value cannot be sent as it is (a static string), or nullptr. The value is
// still written, in PostgreSQL's text form, so that a dead letter keeps it.
using Problem = const char *;
constexpr Problem kOutOfRange =
    "holds a date-time that Bunce's form YYYY-MM-DDTHH:MM:SSZ cannot express (a year outside 0001 to 9999, or infinity)";
constexpr Problem kTooLarge = "holds a number too large for Bunce (beyond double precision)";

// Appends a timestamp (microseconds since 2000-01-01 UTC) in Bunce's form, truncating
// fractional seconds.
Problem append_utc(StringInfo buf, TimestampTz ts, Column *c, Datum d) {
    struct pg_tm tm;
    fsec_t fsec;
    if (TIMESTAMP_NOT_FINITE(ts) || timestamp2tm(ts, nullptr, &tm, &fsec, nullptr, nullptr) != 0 || tm.tm_year < 1 ||
        tm.tm_year > 9999) {
        escape_json(buf, OutputFunctionCall(&c->output, d));
        return kOutOfRange;
    }
    appendStringInfo(buf, "\"%04d-%02d-%02dT%02d:%02d:%02dZ\"", tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec);
    return nullptr;
}

// A date: midnight UTC of that day, so that it stays the same date in Bunce. Its year is
// read from the day number, which a multiplication into microseconds could overflow.
Problem append_date(StringInfo buf, DateADT date, Column *c, Datum d) {
    int year = 0, month, day;
    if (!DATE_NOT_FINITE(date)) j2date(date + POSTGRES_EPOCH_JDATE, &year, &month, &day);
    if (year < 1 || year > 9999) {
        escape_json(buf, OutputFunctionCall(&c->output, d));
        return kOutOfRange;
    }
    appendStringInfo(buf, "\"%04d-%02d-%02dT00:00:00Z\"", year, month, day);
    return nullptr;
}

// Text that is a date-time with an offset is normalised like any payload string.
Problem append_text(StringInfo buf, const char *text) {
    bunce::TimestampText ts;
    CoreError err;
    if (guarded(err, [&] { ts = bunce::classify_timestamp(text); }) && ts.kind == bunce::TimestampText::date_time) {
        escape_json(buf, ts.utc.c_str());
        return nullptr;
    }
    escape_json(buf, text);
    return ts.kind == bunce::TimestampText::out_of_range ? kOutOfRange : nullptr;
}

// Appends a column's value. *text is set to its text when the item has a role.
Problem append_value(StringInfo buf, Column *c, Datum d, const LayoutItem *item, const char **text) {
    if (item->role != ROLE_NONE && (c->kind == KIND_TEXT || c->kind == KIND_INT)) {
        // Emails and ids are strings to Bunce (an integer customer_id becomes one).
        *text = OutputFunctionCall(&c->output, d);
        escape_json(buf, *text);
        return nullptr;
    }
    switch (c->kind) {
        case KIND_BOOL: appendStringInfoString(buf, DatumGetBool(d) ? "true" : "false"); break;
        case KIND_INT: appendStringInfoString(buf, OutputFunctionCall(&c->output, d)); break;
        case KIND_NUMBER: {
            char *s = OutputFunctionCall(&c->output, d);
            // NaN and infinities have no JSON number form.
            if (!isdigit(static_cast<unsigned char>(s[s[0] == '-']))) {
                escape_json(buf, s);
                break;
            }
            appendStringInfoString(buf, s);
            // numeric goes far beyond double precision, which is what Bunce reads
            if (strlen(s) > 300 && std::isinf(strtod(s, nullptr))) return kTooLarge;
            break;
        }
        case KIND_TIMESTAMPTZ: return append_utc(buf, DatumGetTimestampTz(d), c, d);
        case KIND_TIMESTAMP: {
            // As PostgreSQL's own cast to timestamptz: the value is local time in TimeZone.
            int overflow = 0;
            const TimestampTz ts = timestamp2timestamptz_opt_overflow(DatumGetTimestamp(d), &overflow);
            return append_utc(buf, overflow ? DT_NOEND : ts, c, d);
        }
        case KIND_DATE: return append_date(buf, DatumGetDateADT(d), c, d);
        case KIND_JSON: appendStringInfoString(buf, OutputFunctionCall(&c->output, d)); break;
        case KIND_JSONB: {
            Jsonb *jb = DatumGetJsonbP(d);
            JsonbToCString(buf, &jb->root, VARSIZE(jb));
            break;
        }
        case KIND_TEXT: {
            const char *value = OutputFunctionCall(&c->output, d);
            if (item->identity) {
                escape_json(buf, value);
                break;
            }
            return append_text(buf, value);
        }
    }
    return nullptr;
}

// The payload of one row as JSON text; NULL columns are left out. Fills in the fields
// Bunce's rules are about. Returns the first item whose value cannot be sent (its problem in
// *problem), or nullptr.
const LayoutItem *row_payload(StringInfo buf, TriggerSetup *s, TupleTableSlot *slot, bunce::PayloadFields *fields,
                              Problem *problem) {
    *fields = bunce::PayloadFields();
    const LayoutItem *bad = nullptr;
    resetStringInfo(buf);
    appendStringInfoChar(buf, '{');
    bool first = true;
    for (int i = 0; i < s->nitems; i++) {
        LayoutItem *item = &s->items[i];
        if (item->kind == bunce::MappingItem::end_object) {
            appendStringInfoChar(buf, '}');
            first = false;
            continue;
        }
        Datum d = 0;
        if (item->kind == bunce::MappingItem::field) {
            bool isnull;
            d = slot_getattr(slot, s->columns[item->column].attnum, &isnull);
            if (isnull) continue;
        }
        if (!first) appendStringInfoChar(buf, ',');
        escape_json(buf, item->key);
        appendStringInfoChar(buf, ':');
        if (item->kind == bunce::MappingItem::begin_object) {
            appendStringInfoChar(buf, '{');
            fields->has_customer |= item->role == ROLE_CUSTOMER;
            first = true;
            continue;
        }
        const char *text = nullptr;
        if (Problem p = append_value(buf, &s->columns[item->column], d, item, &text); p && !bad) {
            bad = item;
            *problem = p;
        }
        if (item->role == ROLE_EMAIL)
            fields->email = text;
        else if (item->role == ROLE_CUSTOMER_ID)
            fields->customer_id = text;
        else if (item->role == ROLE_CUSTOMER_EMAIL)
            fields->customer_email = text;
        first = false;
    }
    appendStringInfoChar(buf, '}');
    return bad;
}

void enqueue_row(OutboxWriter *w, TriggerSetup *s, TupleTableSlot *slot, StringInfo buf, const char *context) {
    bunce::PayloadFields fields;
    Problem problem = nullptr;
    const LayoutItem *bad = row_payload(buf, s, slot, &fields, &problem);
    CoreError err;
    Datum payload = 0;
    if (bad) {
        err.failed = true;
        err.sqlstate = ERRCODE_INVALID_PARAMETER_VALUE;
        snprintf(err.message, sizeof err.message, "payload field \"%s\" (column \"%s\") %s", bad->key,
                 s->columns[bad->column].name, problem);
        strlcpy(err.hint, "Correct the value, or leave it out of the mapping.", sizeof err.hint);
    } else if (static_cast<size_t>(buf->len) > 2 * static_cast<size_t>(max_payload_size)) {
        // Far too large whatever its form: refused before anything parses it.
        within_size_limit(static_cast<size_t>(buf->len), err);
    } else if (!s->typed_check) {
        payload = validate_payload(buf->data, 0, err);
    } else if (guarded(err, [&] { bunce::check_fields(fields); })) {
        payload = DirectFunctionCall1(jsonb_in, CStringGetDatum(buf->data));
    }
    // The text built here is compact. From typed columns, jsonb's text form adds at most a
    // space after each ',' and ':'; a json column's text may be written in any form. So it
    // is measured as it will be sent, unless it certainly fits.
    if (!err.failed && (!s->typed_check || static_cast<size_t>(buf->len) * 2 > static_cast<size_t>(max_payload_size))) {
        Jsonb *jb = DatumGetJsonbP(payload);
        char *sent = JsonbToCString(nullptr, &jb->root, VARSIZE(jb));
        within_size_limit(strlen(sent), err);
        pfree(sent);
    }
    if (err.failed) {
        refuse_event(err, context, UUIDPGetDatum(&s->event_id), false, buf->data);
        return;
    }
    outbox_insert(w, UUIDPGetDatum(&s->event_id), payload);
}

// The trigger function behind bunce_trigger(): one row, or a transition table's rows.
Datum fire_trigger(FunctionCallInfo fcinfo) {
    if (!CALLED_AS_TRIGGER(fcinfo))
        ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
                        errmsg("bunce_trigger() with no arguments can only be called as a trigger"),
                        errhint("Call bunce_trigger(event_id, payload) to enqueue from SQL.")));
    auto *td = reinterpret_cast<TriggerData *>(fcinfo->context);
    const char *table = RelationGetRelationName(td->tg_relation);
    const char *tgname = td->tg_trigger->tgname;
    if (!TRIGGER_FIRED_AFTER(td->tg_event) || TRIGGER_FIRED_BY_TRUNCATE(td->tg_event)) refuse_timing(tgname, table);
    check_writable("A bunce trigger");
    check_served_database();
    TriggerSetup *s = trigger_setup(td);
    triggers_running++;
    const bool deleting = TRIGGER_FIRED_BY_DELETE(td->tg_event);
    char *context = psprintf("trigger \"%s\" on table \"%s\"", tgname, table);
    StringInfoData buf;
    initStringInfo(&buf);
    OutboxWriter w;

    if (TRIGGER_FIRED_FOR_ROW(td->tg_event)) {
        HeapTuple tuple = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
        TupleTableSlot *slot = MakeSingleTupleTableSlot(RelationGetDescr(td->tg_relation), &TTSOpsHeapTuple);
        ExecStoreHeapTuple(tuple, slot, false);
        enqueue_row(single_row_writer(), s, slot, &buf, context);
        ExecDropSingleTupleTableSlot(slot);
        triggers_running--;
        return PointerGetDatum(nullptr);
    }

    Tuplestorestate *rows = deleting ? td->tg_oldtable : td->tg_newtable;
    if (!rows) refuse_no_transition_table(tgname, table, deleting);
    TupleTableSlot *slot = MakeSingleTupleTableSlot(RelationGetDescr(td->tg_relation), &TTSOpsMinimalTuple);
    MemoryContext per_row = AllocSetContextCreate(CurrentMemoryContext, "bunce row", ALLOCSET_DEFAULT_SIZES);
    outbox_open(&w, true);
    tuplestore_rescan(rows);
    while (tuplestore_gettupleslot(rows, true, false, slot)) {
        MemoryContext old = MemoryContextSwitchTo(per_row);
        enqueue_row(&w, s, slot, &buf, context);
        MemoryContextSwitchTo(old);
        MemoryContextReset(per_row);
        CHECK_FOR_INTERRUPTS();
    }
    outbox_close(&w);
    ExecDropSingleTupleTableSlot(slot);
    triggers_running--;
    return PointerGetDatum(nullptr);
}

}  // namespace
}  // namespace bunce_pg

Datum bunce_trigger_row(PG_FUNCTION_ARGS) { return bunce_pg::fire_trigger(fcinfo); }
