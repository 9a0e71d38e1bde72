// bunce_trigger(event_id, payload): validation, bunce.on_invalid, and the insert. No network,
// no extra locks: one validation pass and one insert per event.
#include <cstring>

#include "enqueue.hpp"
#include "event_catalog.hpp"
#include "outbox.hpp"
#include "payload.hpp"
#include "settings.hpp"

extern "C" {
#include "access/table.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "access/xact.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

PGDLLEXPORT Datum bunce_trigger_enqueue(PG_FUNCTION_ARGS);
PG_FUNCTION_INFO_V1(bunce_trigger_enqueue);
}

namespace bunce_pg {

// bunce.max_payload_size bounds a payload's JSON text as the worker sends it (jsonb's text
// form), so that the worker's memory is bounded by bunce.max_in_flight payloads.
bool within_size_limit(size_t size, CoreError &err) {
    if (size <= static_cast<size_t>(max_payload_size)) return true;
    err.failed = true;
    err.sqlstate = ERRCODE_PROGRAM_LIMIT_EXCEEDED;
    snprintf(err.message, sizeof err.message, "payload is %zu bytes, more than bunce.max_payload_size (%d bytes)", size,
             max_payload_size);
    strlcpy(err.hint, "Send less data with the event, or raise bunce.max_payload_size in the server configuration.",
            sizeof err.hint);
    return false;
}

// Validates and normalises payload JSON text. Returns the jsonb to store, or (Datum) 0 with
// err filled in. `original` is the caller's jsonb, reused when nothing changed; then `text`
// is its text form, and one too large is refused before it is parsed (normalising adds at
// most the quotes of an integer customer_id).
Datum validate_payload(const char *text, Datum original, CoreError &err) {
    const size_t size = strlen(text);
    if (original != static_cast<Datum>(0) && size > static_cast<size_t>(max_payload_size) + 2 &&
        !within_size_limit(size, err))
        return static_cast<Datum>(0);
    // The core reads UTF-8, as Bunce does; the database may hold another encoding.
    const bool convert = GetDatabaseEncoding() != PG_UTF8;
    const char *utf8 = convert ? pg_server_to_any(text, static_cast<int>(size), PG_UTF8) : text;
    bool changed = false;
    char *normalised = nullptr;
    size_t normalised_size = 0;
    if (!guarded(err, [&] {
            bunce::PreparedPayload p = bunce::prepare_payload(utf8);
            changed = p.changed;
            if (changed) normalised = pstrdup_nothrow(p.json.data(), p.json.size());
            normalised_size = p.json.size();
        }))
        return static_cast<Datum>(0);
    if (original != static_cast<Datum>(0)) {
        // Measured as sent: in UTF-8.
        if (!within_size_limit(changed ? normalised_size : strlen(utf8), err)) return static_cast<Datum>(0);
        if (!changed) return original;
    }
    if (changed && convert) normalised = pg_any_to_server(normalised, static_cast<int>(normalised_size), PG_UTF8);
    return DirectFunctionCall1(jsonb_in, CStringGetDatum(changed ? normalised : text));
}

size_t json_string_size(const char *s, size_t len) {
    size_t n = 2 + len;
    for (size_t i = 0; i < len; i++) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' || c == '\t')
            n += 1;
        else if (c < ' ')
            n += 5;  // \u00XX
    }
    return n;
}

namespace {

// A value of a jsonb payload as JSON text.
const char *jsonb_value_text(JsonbValue *v) {
    if (v->type == jbvString) {
        StringInfoData s;
        initStringInfo(&s);
        escape_json(&s, pnstrdup(v->val.string.val, v->val.string.len));
        return s.data;
    }
    if (v->type == jbvBinary) return JsonbToCString(nullptr, v->val.binary.data, v->val.binary.len);
    Jsonb *scalar = JsonbValueToJsonb(v);
    return JsonbToCString(nullptr, &scalar->root, VARSIZE(scalar));
}

// A string that replaces the ordinal-th scalar of a payload.
struct Replacement {
    int ordinal;
    char *text;
};

}  // namespace

Datum validate_jsonb_payload(Jsonb *jb, const char *text, CoreError &err) {
    const size_t size = strlen(text);
    if (size > static_cast<size_t>(max_payload_size) + 2 && !within_size_limit(size, err)) return static_cast<Datum>(0);
    // Not an object, or not UTF-8, which the core reads: its checks on the text, with their messages.
    if (!JB_ROOT_IS_OBJECT(jb) || GetDatabaseEncoding() != PG_UTF8)
        return validate_payload(text, PointerGetDatum(jb), err);

    // The checks of prepare_payload, value by value, in its order: depth, a number beyond
    // double precision, the recipient, then the first value refused in document order.
    CoreError depth_err, value_err;
    bool beyond = false;
    Replacement *replacements = nullptr;
    int nreplacements = 0, capacity = 0, ordinal = 0, depth = 0;
    long grown = 0;  // how much longer the text becomes
    bool is_object[bunce::kMaxPayloadDepth + 1];
    std::string_view top_key;  // the top-level key the value is under
    bool customer_id = false;  // the key at depth 2 is "customer_id"
    auto replace = [&](char *with, long growth) {
        if (nreplacements == capacity) {
            capacity = capacity ? 2 * capacity : 4;
            replacements =
                static_cast<Replacement *>(replacements ? repalloc(replacements, sizeof(Replacement) * capacity)
                                                        : palloc(sizeof(Replacement) * capacity));
        }
        replacements[nreplacements++] = {ordinal, with};
        grown += growth;
    };
    JsonbIterator *it = JsonbIteratorInit(&jb->root);
    JsonbValue v;
    JsonbIteratorToken token;
    while ((token = JsonbIteratorNext(&it, &v, false)) != WJB_DONE) {
        if (token == WJB_BEGIN_OBJECT || token == WJB_BEGIN_ARRAY) {
            if (++depth > static_cast<int>(bunce::kMaxPayloadDepth)) {
                guarded(depth_err, [&] { bunce::check_parsed_depth(static_cast<size_t>(depth)); });
                break;
            }
            is_object[depth] = token == WJB_BEGIN_OBJECT;
            continue;
        }
        if (token == WJB_END_OBJECT || token == WJB_END_ARRAY) {
            depth--;
            continue;
        }
        if (token == WJB_KEY) {
            const std::string_view key(v.val.string.val, v.val.string.len);
            if (depth == 1) top_key = key;
            if (depth == 2) customer_id = key == "customer_id";
            continue;
        }
        ordinal++;  // a scalar value or array element
        CoreError bad;
        if (v.type == jbvString) {
            const std::string_view value(v.val.string.val, v.val.string.len);
            char *utc = nullptr;
            if (!guarded(bad, [&] {
                    if (!bunce::is_normalised(top_key, depth == 1)) return;
                    if (auto u = bunce::normalise_string(top_key, value); u && *u != value)
                        utc = pstrdup_nothrow(u->data(), u->size());
                }))
                utc = nullptr;
            if (utc)
                replace(utc, static_cast<long>(strlen(utc) + 2) -
                                 static_cast<long>(json_string_size(value.data(), value.size())));
        } else if (v.type == jbvNumeric) {
            char *number = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v.val.numeric)));
            const bool is_customer_id = depth == 2 && is_object[2] && customer_id && top_key == "customer";
            if (guarded(bad,
                        [&] {
                            beyond |= bunce::beyond_double(number);
                            bunce::check_number(top_key, number);
                            if (is_customer_id) bunce::check_integer_customer_id(number);
                        }) &&
                is_customer_id)
                replace(number, 2);  // made a string
        }
        if (bad.failed && !value_err.failed) value_err = bad;
    }
    if (depth_err.failed || (beyond && value_err.failed)) {
        err = depth_err.failed ? depth_err : value_err;
        return static_cast<Datum>(0);
    }
    JsonbValue email, customer;
    const char *email_text =
        getKeyJsonValueFromContainer(&jb->root, "email", 5, &email) ? jsonb_value_text(&email) : "";
    const char *customer_text =
        getKeyJsonValueFromContainer(&jb->root, "customer", 8, &customer) ? jsonb_value_text(&customer) : "";
    if (!guarded(err, [&] { bunce::check_parsed_recipient(email_text, customer_text); })) return static_cast<Datum>(0);
    if (value_err.failed) {
        err = value_err;
        return static_cast<Datum>(0);
    }
    if (!within_size_limit(static_cast<size_t>(static_cast<long>(size) + grown), err)) return static_cast<Datum>(0);
    if (nreplacements == 0) return PointerGetDatum(jb);

    // The payload again, with the replacements.
    JsonbParseState *state = nullptr;
    JsonbValue *result = nullptr;
    int next = 0;
    ordinal = 0;
    it = JsonbIteratorInit(&jb->root);
    while ((token = JsonbIteratorNext(&it, &v, false)) != WJB_DONE) {
        if ((token == WJB_VALUE || token == WJB_ELEM) && next < nreplacements &&
            ++ordinal == replacements[next].ordinal) {
            v.type = jbvString;
            v.val.string.val = replacements[next].text;
            v.val.string.len = static_cast<int>(strlen(replacements[next].text));
            next++;
        }
        result = pushJsonbValue(&state, token, token < WJB_BEGIN_ARRAY ? &v : nullptr);
    }
    return JsonbPGetDatum(JsonbValueToJsonb(result));
}

const char *utc_text(TimestampTz ts) {
    struct pg_tm tm;
    fsec_t fsec;
    if (TIMESTAMP_NOT_FINITE(ts) || timestamp2tm(ts, nullptr, &tm, &fsec, nullptr, nullptr) != 0 || tm.tm_year < 1 ||
        tm.tm_year > 9999)
        return nullptr;
    // Written digit by digit: psprintf cost a row trigger as much as the rest of its payload.
    char *out = static_cast<char *>(palloc(21));
    auto put = [](char *at, int value, int digits) {
        for (int i = digits - 1; i >= 0; i--, value /= 10) at[i] = static_cast<char>('0' + value % 10);
    };
    put(out, tm.tm_year, 4);
    put(out + 5, tm.tm_mon, 2);
    put(out + 8, tm.tm_mday, 2);
    put(out + 11, tm.tm_hour, 2);
    put(out + 14, tm.tm_min, 2);
    put(out + 17, tm.tm_sec, 2);
    out[4] = out[7] = '-';
    out[10] = 'T';
    out[13] = out[16] = ':';
    out[19] = 'Z';
    out[20] = '\0';
    return out;
}

// The (sub)transaction in which refuse_event is writing a dead letter. (An ERROR leaves it
// set, but only for a transaction that is then aborted: nothing else is written in it.)
LocalTransactionId dead_letter_lxid = InvalidLocalTransactionId;
SubTransactionId dead_letter_subxid = InvalidSubTransactionId;

bool writing_dead_letter() {
    return dead_letter_lxid != InvalidLocalTransactionId && dead_letter_lxid == MyProc->lxid &&
           dead_letter_subxid == GetCurrentSubTransactionId();
}

// A refused event: an ERROR, or with bunce.on_invalid = dead_letter a row in
// bunce.dead_letters and a WARNING, so the business write goes through. Returns the id.
int64 refuse_event(const CoreError &err, const char *context, Datum event_id, bool event_null,
                   const char *payload_text) {
    if (on_invalid == ON_INVALID_ERROR) raise(err, context);

    // Written as the owner of bunce.dead_letters: the caller needs no privilege on schema
    // bunce (the right to enqueue is EXECUTE on bunce_trigger, or being able to fire the
    // trigger). Everything in the statement is schema-qualified, and it runs with a pinned
    // search_path.
    Oid dead_relid = get_relname_relid("dead_letters", bunce_namespace());
    if (!OidIsValid(dead_relid))
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE), errmsg("bunce.dead_letters is missing"),
                        errhint("Reinstall the extension: DROP EXTENSION bunce; CREATE EXTENSION bunce.")));
    Relation dead_rel = table_open(dead_relid, AccessShareLock);
    const Oid dead_owner = dead_rel->rd_rel->relowner;
    table_close(dead_rel, NoLock);
    const char *sql =
        "INSERT INTO bunce.dead_letters (id, event_id, payload, idempotency_key, reason, message, "
        "attempts, enqueued_at) VALUES (pg_catalog.nextval('bunce.event_id_seq'::pg_catalog.regclass), "
        "$1, $2, pg_catalog.gen_random_uuid(), 'invalid', $3, 0, pg_catalog.now()) RETURNING id";
    Oid types[3] = {UUIDOID, JSONBOID, TEXTOID};
    Datum values[3];
    char nulls[3] = {' ', ' ', ' '};
    values[0] = event_id;
    if (event_null) nulls[0] = 'n';
    // Keep what was given, even when it is not JSON, so nothing is lost.
    if (!payload_text) {
        nulls[1] = 'n';
    } else if (err.sqlstate == ERRCODE_INVALID_TEXT_REPRESENTATION) {
        StringInfoData wrapped;  // {"unparsed": "<the text, as a JSON string>"}
        initStringInfo(&wrapped);
        appendStringInfoString(&wrapped, "{\"unparsed\": ");
        escape_json(&wrapped, payload_text);
        appendStringInfoChar(&wrapped, '}');
        values[1] = DirectFunctionCall1(jsonb_in, CStringGetDatum(wrapped.data));
    } else {
        values[1] = DirectFunctionCall1(jsonb_in, CStringGetDatum(payload_text));
    }
    StringInfoData message;
    initStringInfo(&message);
    if (context) appendStringInfo(&message, "%s: ", context);
    appendStringInfoString(&message, err.message);
    values[2] = CStringGetTextDatum(message.data);

    Oid save_userid;
    int save_sec_context;
    GetUserIdAndSecContext(&save_userid, &save_sec_context);
    // An ERROR in between is fine: transaction abort restores the user id.
    SetUserIdAndSecContext(dead_owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
    // Not the caller's search_path: nothing the caller planted may run as the table owner.
    const int save_nestlevel = NewGUCNestLevel();
    (void)set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0,
                            false);
    SPI_connect();
    dead_letter_lxid = MyProc->lxid;
    dead_letter_subxid = GetCurrentSubTransactionId();
    if (SPI_execute_with_args(sql, 3, types, values, nulls, false, 1) != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
        elog(ERROR, "could not insert into bunce.dead_letters");
    dead_letter_lxid = InvalidLocalTransactionId;
    bool isnull;
    int64 id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
    SPI_finish();
    AtEOXact_GUC(true, save_nestlevel);
    SetUserIdAndSecContext(save_userid, save_sec_context);
    ereport(WARNING, (errcode(err.sqlstate),
                      errmsg("bunce event refused and kept as dead letter %lld", static_cast<long long>(id)),
                      errdetail("%s", message.data),
                      errhint("See bunce.dead_letters; bunce.on_invalid = dead_letter is in effect.")));
    return id;
}

namespace {

// bunce_trigger(event_id uuid, payload jsonb), returning the event's id.
Datum enqueue_event(FunctionCallInfo fcinfo) {
    check_writable("bunce_trigger()");
    check_served_database();
    if (PG_ARGISNULL(0) || PG_ARGISNULL(1)) {
        CoreError err;
        err.sqlstate = ERRCODE_NULL_VALUE_NOT_ALLOWED;
        strlcpy(err.message, PG_ARGISNULL(0) ? "event_id must not be NULL" : "payload must not be NULL",
                sizeof err.message);
        strlcpy(err.hint,
                PG_ARGISNULL(0) ? "Pass the UUID of an event created in Bunce."
                                : "Pass a jsonb object with \"email\" or \"customer\".",
                sizeof err.hint);
        char *text = PG_ARGISNULL(1) ? nullptr : JsonbToCString(nullptr, &PG_GETARG_JSONB_P(1)->root, -1);
        PG_RETURN_INT64(refuse_event(err, nullptr, PG_ARGISNULL(0) ? 0 : PG_GETARG_DATUM(0), PG_ARGISNULL(0), text));
    }
    Datum event_id = PG_GETARG_DATUM(0);
    Jsonb *jb = PG_GETARG_JSONB_P(1);
    char *text = JsonbToCString(nullptr, &jb->root, VARSIZE(jb));
    CoreError err;
    Datum payload = validate_jsonb_payload(jb, text, err);
    if (!err.failed) payload = check_event_parameters(DatumGetUUIDP(event_id), payload, err);
    if (err.failed) PG_RETURN_INT64(refuse_event(err, nullptr, event_id, false, text));

    PG_RETURN_INT64(outbox_insert(single_row_writer(), event_id, payload, false));
}

}  // namespace
}  // namespace bunce_pg

Datum bunce_trigger_enqueue(PG_FUNCTION_ARGS) { return bunce_pg::enqueue_event(fcinfo); }
