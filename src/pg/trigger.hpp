// The generic trigger bunce_trigger(event_id [, mapping]) (trigger_setup.cpp: its setup,
// checked at CREATE TRIGGER and ALTER TABLE; trigger.cpp: the JSON encoder and the firing).
#pragma once

#include "guard.hpp"
#include "mapping.hpp"

extern "C" {
#include "postgres.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "nodes/parsenodes.h"
#include "utils/uuid.h"

PGDLLEXPORT Datum bunce_trigger_row(PG_FUNCTION_ARGS);
}

namespace bunce_pg {

enum ValueKind {
    KIND_TEXT,
    KIND_BOOL,
    KIND_INT,
    KIND_NUMERIC,
    KIND_FLOAT,
    KIND_TIMESTAMPTZ,
    KIND_TIMESTAMP,
    KIND_DATE,
    KIND_JSON,
    KIND_JSONB
};

struct Column {
    AttrNumber attnum;
    char *name;
    ValueKind kind;
    FmgrInfo output;
};

// What an item is to Bunce's payload rules.
enum Role { ROLE_NONE, ROLE_EMAIL, ROLE_CUSTOMER, ROLE_CUSTOMER_ID, ROLE_CUSTOMER_EMAIL };

// One item of the payload layout: a column under a key, or the start/end of a nested object.
struct LayoutItem {
    bunce::MappingItem::Kind kind;
    char *key;
    int column;  // index into TriggerSetup.columns (fields only)
    Role role;
    bool identity;  // in the customer object, or the top-level email: text is never rewritten
};

struct TriggerSetup {
    Oid trigger;  // hash key
    Oid relid;
    bool valid;
    MemoryContext cxt;
    pg_uuid_t event_id;
    bool by_name;            // the trigger names its event: resolved again after a catalog sync
    uint64 catalog_version;  // of the catalog the name was resolved in
    bool name_failed;        // the name resolves to no event, or to several: name_error
    CoreError name_error;
    // The payload's shape is known from the column types: the rules need checking only on
    // the values of the email and customer fields, not by parsing the JSON of every row.
    bool typed_check;
    int nitems;
    LayoutItem *items;
    Column *columns;
    TupleTableSlot *row_slot;  // for the rows of a row trigger, made at its first row
};

// bunce trigger calls under way in this backend (they can nest: a user type's output function
// may fire another); reset at transaction end.
extern int triggers_running;

// The setup of a firing trigger: built once per trigger and backend, kept until the table's
// relcache entry is invalidated (ALTER TABLE, CREATE OR REPLACE TRIGGER, ...).
TriggerSetup *trigger_setup(TriggerData *td);

[[noreturn]] void refuse_timing(const char *tgname, const char *table);
[[noreturn]] void refuse_no_transition_table(const char *tgname, const char *table, bool deleting);

// From the utility hook: CREATE TRIGGER of a bunce trigger is refused when the trigger could
// never fire; ALTER TABLE that breaks a mapping warns.
void check_create_trigger(CreateTrigStmt *stmt);
void warn_broken_mappings(Node *stmt);

}  // namespace bunce_pg
