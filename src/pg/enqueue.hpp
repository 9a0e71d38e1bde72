// Validating an event and refusing it (enqueue.cpp), shared by bunce_trigger(event_id,
// payload) and the generic trigger.
#pragma once

#include <cstddef>

#include "guard.hpp"

extern "C" {
#include "postgres.h"
#include "datatype/timestamp.h"
#include "utils/jsonb.h"
}

namespace bunce_pg {

// Whether a payload of `size` bytes (as sent) is within bunce.max_payload_size; err filled in
// when not.
bool within_size_limit(size_t size, CoreError &err);

// Validates and normalises payload JSON text. Returns the jsonb to store, or (Datum) 0 with
// err filled in. `original` is the caller's jsonb, reused when nothing changed (then `text`
// is its text form), or 0.
Datum validate_payload(const char *text, Datum original, CoreError &err);
// The same for a payload given as jsonb, `text` its text form: checked value by value
// without parsing the text again.
Datum validate_jsonb_payload(Jsonb *jb, const char *text, CoreError &err);

// The length of a string as escape_json writes it, quotes included.
size_t json_string_size(const char *s, size_t len);

// A timestamp in Bunce's form YYYY-MM-DDTHH:MM:SSZ (UTC, fractional seconds truncated),
// palloc'd; nullptr when that form cannot hold it (infinite, or a year outside 0001-9999).
const char *utc_text(TimestampTz ts);

// A refused event: an ERROR, or with bunce.on_invalid = dead_letter a row in
// bunce.dead_letters and a WARNING, so the business write goes through. Returns the dead
// letter's id. `context` (or nullptr) prefixes the message.
int64 refuse_event(const CoreError &err, const char *context, Datum event_id, bool event_null,
                   const char *payload_text);

// Whether refuse_event is writing its dead letter now: a write of bunce's own, which the
// trigger against replicated changes lets through (replicated.cpp).
bool writing_dead_letter();

}  // namespace bunce_pg
