// The generic trigger as it fires: each row's payload built as jsonb from the column types
// (the type-driven encoder, no JSON text parsed), checked, and written to the outbox. A statement-level
// trigger writes its transition table's rows in one batch.
#include <cmath>
#include <cstring>

#include "enqueue.hpp"
#include "event_catalog.hpp"
#include "outbox.hpp"
#include "payload.hpp"
#include "settings.hpp"
#include "timestamp.hpp"
#include "trigger.hpp"

extern "C" {
#include "catalog/pg_trigger.h"
#include "executor/executor.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(bunce_trigger_row);
}

namespace bunce_pg {
namespace {

// Why a column's value cannot be sent as it is (a static string), or nullptr. The value is
// still written, as a string of PostgreSQL's text form, so that a dead letter keeps it.
using Problem = const char *;
constexpr Problem kOutOfRange =
    "holds a date-time that Bunce's form YYYY-MM-DDTHH:MM:SSZ cannot express (a year outside 0001 to 9999, or infinity)";
constexpr Problem kTooLarge = "holds a number too large for Bunce (beyond double precision)";

// The payload of one row, built as jsonb value by value: no JSON text is written or parsed.
struct RowPayload {
    JsonbParseState *state = nullptr;
    // The length of the payload's JSON text as the worker sends it (jsonb's text form), but
    // for the values of json and jsonb columns, which are measured from that text.
    size_t text_size = 0;
    bool first = true;  // no member yet in the object being built
    bunce::PayloadFields fields;
};

// A payload whose text is already past this is refused for its size whatever follows; its
// values from there on are not copied (jsonb could not hold a large enough row at all).
constexpr size_t kBuildLimit = 64 * 1024 * 1024;

void push_string(RowPayload *p, JsonbIteratorToken token, const char *s) {
    JsonbValue v;
    v.type = jbvString;
    v.val.string.val = const_cast<char *>(s);
    v.val.string.len = static_cast<int>(strlen(s));
    p->text_size += json_string_size(s, static_cast<size_t>(v.val.string.len));
    if (p->text_size > kBuildLimit && token == WJB_VALUE) v.val.string.len = 0;
    pushJsonbValue(&p->state, token, &v);
}

void push_key(RowPayload *p, const char *key) {
    if (!p->first) p->text_size += 2;  // ", "
    p->first = false;
    push_string(p, WJB_KEY, key);
    p->text_size += 2;  // ": "
}

void push_number(RowPayload *p, Numeric n, size_t text_size) {
    JsonbValue v;
    v.type = jbvNumeric;
    v.val.numeric = n;
    p->text_size += text_size;
    pushJsonbValue(&p->state, WJB_VALUE, &v);
}

// A column's value as its output function writes it, as a string: it cannot be sent as it is.
Problem push_as_text(RowPayload *p, Column *c, Datum d, Problem problem) {
    push_string(p, WJB_VALUE, OutputFunctionCall(&c->output, d));
    return problem;
}

// A timestamp (microseconds since 2000-01-01 UTC) in Bunce's form, fractional seconds
// truncated.
Problem push_utc(RowPayload *p, TimestampTz ts, Column *c, Datum d) {
    const char *utc = utc_text(ts);
    if (!utc) return push_as_text(p, c, d, kOutOfRange);
    push_string(p, WJB_VALUE, utc);
    return nullptr;
}

// A date: midnight UTC of that day, so that it stays the same date in Bunce. Its year is
// read from the day number, which a multiplication into microseconds could overflow.
Problem push_date(RowPayload *p, DateADT date, Column *c, Datum d) {
    int year = 0, month, day;
    if (!DATE_NOT_FINITE(date)) j2date(date + POSTGRES_EPOCH_JDATE, &year, &month, &day);
    if (year < 1 || year > 9999) return push_as_text(p, c, d, kOutOfRange);
    push_string(p, WJB_VALUE, psprintf("%04d-%02d-%02dT00:00:00Z", year, month, day));
    return nullptr;
}

// Text that is a date-time with an offset is normalised like any payload string.
Problem push_text(RowPayload *p, const char *text) {
    bunce::TimestampText ts;
    CoreError err;
    if (guarded(err, [&] { ts = bunce::classify_timestamp(text); }) && ts.kind == bunce::TimestampText::date_time) {
        push_string(p, WJB_VALUE, pstrdup(ts.utc.c_str()));
        return nullptr;
    }
    push_string(p, WJB_VALUE, text);
    return ts.kind == bunce::TimestampText::out_of_range ? kOutOfRange : nullptr;
}

Numeric numeric_of(const char *text) {
    return DatumGetNumeric(
        DirectFunctionCall3(numeric_in, CStringGetDatum(text), ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)));
}

// A number column. NaN and infinities have no JSON number form: they are sent as strings.
Problem push_numeric(RowPayload *p, Column *c, Datum d) {
    const char *s = OutputFunctionCall(&c->output, d);
    if (!isdigit(static_cast<unsigned char>(s[s[0] == '-']))) {
        push_string(p, WJB_VALUE, s);
        return nullptr;
    }
    size_t size = strlen(s);
    Numeric n;
    if (c->kind == KIND_NUMERIC) {
        n = DatumGetNumeric(d);
    } else {
        n = numeric_of(s);
        // jsonb writes a number out in full: 1e+300 takes 301 characters.
        if (strchr(s, 'e')) size = strlen(DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(n))));
    }
    push_number(p, n, size);
    // numeric goes far beyond double precision, which is what Bunce reads
    return size > 300 && std::isinf(strtod(s, nullptr)) ? kTooLarge : nullptr;
}

// The value of a json or jsonb column, as it is.
void push_jsonb(RowPayload *p, Jsonb *jb) {
    JsonbValue v;
    v.type = jbvBinary;
    v.val.binary.data = &jb->root;
    v.val.binary.len = static_cast<int>(VARSIZE(jb) - VARHDRSZ);
    pushJsonbValue(&p->state, WJB_VALUE, &v);
}

// Pushes a column's value. *text is set to its text when the item has a role. `top_key` is
// the payload's top-level key the value is under.
Problem push_value(RowPayload *p, Column *c, Datum d, const LayoutItem *item, const char *top_key, const char **text,
                   CoreError &err) {
    if (item->role != ROLE_NONE && (c->kind == KIND_TEXT || c->kind == KIND_INT)) {
        // Emails and ids are strings to Bunce (an integer customer_id becomes one).
        *text = OutputFunctionCall(&c->output, d);
        push_string(p, WJB_VALUE, *text);
        return nullptr;
    }
    switch (c->kind) {
        case KIND_BOOL: {
            JsonbValue v;
            v.type = jbvBool;
            v.val.boolean = DatumGetBool(d);
            p->text_size += v.val.boolean ? 4 : 5;
            pushJsonbValue(&p->state, WJB_VALUE, &v);
            return nullptr;
        }
        case KIND_INT: {
            const char *s = OutputFunctionCall(&c->output, d);
            push_number(p, numeric_of(s), strlen(s));
            return nullptr;
        }
        case KIND_NUMERIC:
        case KIND_FLOAT: return push_numeric(p, c, d);
        case KIND_TIMESTAMPTZ: return push_utc(p, DatumGetTimestampTz(d), c, d);
        case KIND_TIMESTAMP: {
            // As PostgreSQL's own cast to timestamptz: the value is local time in TimeZone.
            int overflow = 0;
            const TimestampTz ts = timestamp2timestamptz_opt_overflow(DatumGetTimestamp(d), &overflow);
            return push_utc(p, overflow ? DT_NOEND : ts, c, d);
        }
        case KIND_DATE: return push_date(p, DatumGetDateADT(d), c, d);
        case KIND_JSON: {
            // Checked as the text of a payload member first: what jsonb cannot store (a NUL
            // character) is refused as bunce_trigger() refuses it, not by jsonb_in's ERROR.
            const char *json = OutputFunctionCall(&c->output, d);
            const bool convert = GetDatabaseEncoding() != PG_UTF8;
            const char *utf8 = convert ? pg_server_to_any(json, strlen(json), PG_UTF8) : json;
            const char *key = convert ? pg_server_to_any(top_key, strlen(top_key), PG_UTF8) : top_key;
            CoreError bad;
            if (!guarded(bad, [&] { bunce::check_member_value(key, utf8); })) {
                if (!err.failed) err = bad;
                push_string(p, WJB_VALUE, json);
                return nullptr;
            }
            push_jsonb(p, DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json))));
            return nullptr;
        }
        case KIND_JSONB: push_jsonb(p, DatumGetJsonbP(d)); return nullptr;
        case KIND_TEXT: {
            const char *value = OutputFunctionCall(&c->output, d);
            if (item->identity) {
                push_string(p, WJB_VALUE, value);
                return nullptr;
            }
            return push_text(p, value);
        }
    }
    return nullptr;
}

// Builds the payload of one row as jsonb; NULL columns are left out. Fills in the fields
// Bunce's rules are about. A value that cannot be sent is kept as a string of its text form
// (so a dead letter keeps it), and the first one fills in err.
Jsonb *row_payload(TriggerSetup *s, TupleTableSlot *slot, RowPayload *p, CoreError &err) {
    pushJsonbValue(&p->state, WJB_BEGIN_OBJECT, nullptr);
    p->text_size = 2;               // {}
    const char *top_key = nullptr;  // the top-level key of the current item
    int depth = 0;
    for (int i = 0; i < s->nitems; i++) {
        LayoutItem *item = &s->items[i];
        if (item->kind == bunce::MappingItem::end_object) {
            pushJsonbValue(&p->state, WJB_END_OBJECT, nullptr);
            p->text_size += 2;
            p->first = false;
            depth--;
            continue;
        }
        Datum d = 0;
        if (item->kind == bunce::MappingItem::field) {
            bool isnull;
            d = slot_getattr(slot, s->columns[item->column].attnum, &isnull);
            if (isnull) continue;
        }
        if (depth == 0) top_key = item->key;
        push_key(p, item->key);
        if (item->kind == bunce::MappingItem::begin_object) {
            pushJsonbValue(&p->state, WJB_BEGIN_OBJECT, nullptr);
            p->fields.has_customer |= item->role == ROLE_CUSTOMER;
            p->first = true;
            depth++;
            continue;
        }
        Column *c = &s->columns[item->column];
        const char *text = nullptr;
        if (Problem problem = push_value(p, c, d, item, top_key, &text, err); problem && !err.failed) {
            err.failed = true;
            err.sqlstate = ERRCODE_INVALID_PARAMETER_VALUE;
            snprintf(err.message, sizeof err.message, "payload field \"%s\" (column \"%s\") %s", item->key, c->name,
                     problem);
            strlcpy(err.hint, "Correct the value, or leave it out of the mapping.", sizeof err.hint);
        }
        if (item->role == ROLE_EMAIL)
            p->fields.email = text;
        else if (item->role == ROLE_CUSTOMER_ID)
            p->fields.customer_id = text;
        else if (item->role == ROLE_CUSTOMER_EMAIL)
            p->fields.customer_email = text;
    }
    return JsonbValueToJsonb(pushJsonbValue(&p->state, WJB_END_OBJECT, nullptr));
}

void enqueue_row(OutboxWriter *w, TriggerSetup *s, TupleTableSlot *slot, TriggerData *td, bool may_wait) {
    RowPayload p;
    CoreError err;
    Jsonb *jb = row_payload(s, slot, &p, err);
    Datum payload = JsonbPGetDatum(jb);
    char *text = nullptr;  // the payload's JSON text, when it had to be written
    // Far too large whatever the values of json columns add (not counted in text_size).
    if (!err.failed && p.text_size > 2 * static_cast<size_t>(max_payload_size)) within_size_limit(p.text_size, err);
    if (!err.failed && !s->typed_check) {
        // json columns, or another encoding than UTF-8: the full check, on the text
        text = JsonbToCString(nullptr, &jb->root, VARSIZE(jb));
        payload = validate_payload(text, payload, err);
    } else if (!err.failed && guarded(err, [&] { bunce::check_fields(p.fields); })) {
        within_size_limit(p.text_size, err);
    }
    if (s->name_failed) err = s->name_error;  // a dead letter without an event id
    if (!err.failed) payload = check_event_parameters(&s->event_id, payload, err);
    if (err.failed) {
        if (!text) text = JsonbToCString(nullptr, &jb->root, VARSIZE(jb));
        const char *context = psprintf("trigger \"%s\" on table \"%s\"", td->tg_trigger->tgname,
                                       RelationGetRelationName(td->tg_relation));
        refuse_event(err, context, UUIDPGetDatum(&s->event_id), s->name_failed, text);
        return;
    }
    outbox_insert(w, UUIDPGetDatum(&s->event_id), payload, may_wait);
}

// Whether the table has no AFTER trigger but bunce's (and PostgreSQL's own, of foreign keys):
// only then may a row's event wait in the row writer until the statement ends, as no other
// trigger of the statement could look for it in bunce.outbox.
bool only_bunce_after_triggers(TriggerData *td) {
    const TriggerDesc *desc = td->tg_relation->trigdesc;
    for (int i = 0; i < desc->numtriggers; i++) {
        const Trigger *t = &desc->triggers[i];
        if (TRIGGER_FOR_AFTER(t->tgtype) && !t->tgisinternal && t->tgenabled != TRIGGER_DISABLED &&
            t->tgfoid != td->tg_trigger->tgfoid)
            return false;
    }
    return true;
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
    OutboxWriter w;

    if (TRIGGER_FIRED_FOR_ROW(td->tg_event)) {
        HeapTuple tuple = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
        // The setup's slot, made once over a copy of the descriptor (the setup goes with any
        // change to the table); a call nested in another makes its own, that one may be using it.
        TupleTableSlot *slot;
        const bool own_slot = triggers_running > 1;
        if (own_slot) {
            slot = MakeSingleTupleTableSlot(RelationGetDescr(td->tg_relation), &TTSOpsHeapTuple);
        } else {
            if (!s->row_slot) {
                MemoryContext old = MemoryContextSwitchTo(s->cxt);
                s->row_slot =
                    MakeSingleTupleTableSlot(CreateTupleDescCopy(RelationGetDescr(td->tg_relation)), &TTSOpsHeapTuple);
                MemoryContextSwitchTo(old);
            }
            slot = s->row_slot;
        }
        ExecStoreHeapTuple(tuple, slot, false);
        enqueue_row(single_row_writer(), s, slot, td, only_bunce_after_triggers(td));
        ExecClearTuple(slot);
        if (own_slot) ExecDropSingleTupleTableSlot(slot);
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
        enqueue_row(&w, s, slot, td, true);
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
