// A bunce trigger's setup: its arguments parsed and its columns looked up once per trigger and
// backend, and the same checks at CREATE TRIGGER and after ALTER TABLE.
#include <cstring>

#include "event_catalog.hpp"
#include "guard.hpp"
#include "trigger.hpp"

extern "C" {
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "parser/parse_func.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
}

namespace bunce_pg {

int triggers_running = 0;

namespace {

HTAB *setups = nullptr;
bool setups_invalidated = false;

void invalidate_setups(Datum, Oid relid) {
    if (!setups) return;
    HASH_SEQ_STATUS it;
    hash_seq_init(&it, setups);
    while (auto *s = static_cast<TriggerSetup *>(hash_seq_search(&it))) {
        if (relid == InvalidOid || s->relid == relid) {
            s->valid = false;
            setups_invalidated = true;
        }
    }
}

// Frees the setups invalidated since (those of dropped triggers would otherwise stay for the
// life of the session). Only when no bunce trigger is running in this backend: one may be
// using its setup while a user type's output function fires another.
void sweep_setups() {
    if (!setups_invalidated || triggers_running > 0) return;
    setups_invalidated = false;
    HASH_SEQ_STATUS it;
    hash_seq_init(&it, setups);
    while (auto *s = static_cast<TriggerSetup *>(hash_seq_search(&it))) {
        if (s->valid) continue;
        MemoryContextDelete(s->cxt);
        hash_search(setups, &s->trigger, HASH_REMOVE, nullptr);
    }
}

// What uuid_in accepts (checked first: uuid_in's own error would quote the argument and end
// the statement without the trigger's name): 32 hex digits, a hyphen allowed after any group
// of four, optionally in braces.
bool looks_like_uuid(const char *s) {
    size_t len = strlen(s);
    if (len >= 2 && s[0] == '{' && s[len - 1] == '}') {
        s++;
        len -= 2;
    }
    int digits = 0;
    for (size_t i = 0; i < len; i++) {
        if (isxdigit(static_cast<unsigned char>(s[i]))) {
            digits++;
        } else if (s[i] != '-' || digits == 0 || digits % 4 != 0 || digits == 32 || s[i - 1] == '-') {
            return false;
        }
    }
    return digits == 32 && s[len - 1] != '-';
}

ValueKind kind_of(Oid type) {
    switch (getBaseType(type)) {
        case BOOLOID: return KIND_BOOL;
        case INT2OID:
        case INT4OID:
        case INT8OID:
        case OIDOID: return KIND_INT;
        case FLOAT4OID:
        case FLOAT8OID: return KIND_FLOAT;
        case NUMERICOID: return KIND_NUMERIC;
        case TIMESTAMPTZOID: return KIND_TIMESTAMPTZ;
        case TIMESTAMPOID: return KIND_TIMESTAMP;
        case DATEOID: return KIND_DATE;
        case JSONOID: return KIND_JSON;
        case JSONBOID: return KIND_JSONB;
        default: return KIND_TEXT;
    }
}

void add_column(TriggerSetup *s, Relation rel, AttrNumber attnum, int index) {
    Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
    Column *c = &s->columns[index];
    c->attnum = attnum;
    c->name = MemoryContextStrdup(s->cxt, NameStr(att->attname));
    c->kind = kind_of(att->atttypid);
    Oid out;
    bool varlena;
    getTypeOutputInfo(att->atttypid, &out, &varlena);
    fmgr_info_cxt(out, &c->output, s->cxt);
}

// Marks the items Bunce's rules are about, and decides whether their column types alone
// guarantee the payload's shape (text emails, a mapped customer object, no JSON columns
// that could hold anything). Otherwise every row's JSON goes through the full check.
void assign_roles(TriggerSetup *s) {
    bool typed = true;
    int depth = 0;
    bool in_customer = false;
    for (int i = 0; i < s->nitems; i++) {
        LayoutItem *item = &s->items[i];
        item->role = ROLE_NONE;
        item->identity = in_customer;
        if (item->kind == bunce::MappingItem::end_object) {
            if (--depth == 0) in_customer = false;
            continue;
        }
        const bool top = depth == 0;
        if (item->kind == bunce::MappingItem::begin_object) {
            if (top && strcmp(item->key, "customer") == 0) {
                item->role = ROLE_CUSTOMER;
                item->identity = in_customer = true;
            } else if (in_customer) {
                typed = false;  // an object inside customer (devices, a name...): check its shape
            }
            depth++;
            continue;
        }
        const ValueKind kind = s->columns[item->column].kind;
        if (kind == KIND_JSON || kind == KIND_JSONB) typed = false;
        if (top && strcmp(item->key, "email") == 0) {
            item->role = ROLE_EMAIL;
            item->identity = true;
            typed &= kind == KIND_TEXT;
        } else if (top && strcmp(item->key, "customer") == 0) {
            typed = false;  // a column as the whole customer: check what it holds
        } else if (in_customer && depth == 1) {
            if (strcmp(item->key, "customer_id") == 0) {
                item->role = ROLE_CUSTOMER_ID;
                typed &= kind == KIND_TEXT || kind == KIND_INT;
            } else if (strcmp(item->key, "email") == 0) {
                item->role = ROLE_CUSTOMER_EMAIL;
                typed &= kind == KIND_TEXT;
            } else if (strcmp(item->key, "first_name") == 0 || strcmp(item->key, "last_name") == 0 ||
                       strcmp(item->key, "phone_no") == 0) {
                typed &= kind == KIND_TEXT;
            } else if (strcmp(item->key, "devices") == 0) {
                typed = false;
            }
        }
    }
    // The typed check reads emails and ids as UTF-8: in another encoding, the full check runs
    // on the payload converted.
    s->typed_check = typed && GetDatabaseEncoding() == PG_UTF8;
}

// A trigger's mapping as arrays in the current memory context: the layout items (kind and
// key) and each item's column name (fields only). False, with err filled in, when the
// mapping cannot be used.
bool parse_mapping_layout(const char *mapping, LayoutItem **items, char ***columns, int *n, CoreError &err) {
    *n = 0;
    return guarded(err, [&] {
        std::vector<bunce::MappingItem> parsed = bunce::parse_mapping(mapping);
        *items = static_cast<LayoutItem *>(palloc_extended(sizeof(LayoutItem) * parsed.size(), MCXT_ALLOC_NO_OOM));
        *columns = static_cast<char **>(palloc_extended(sizeof(char *) * parsed.size(), MCXT_ALLOC_NO_OOM));
        if (!*items || !*columns) throw std::bad_alloc();
        for (const auto &p : parsed) {
            (*items)[*n] = {p.kind, pstrdup_nothrow(p.key.data(), p.key.size()), -1, ROLE_NONE};
            (*columns)[*n] = pstrdup_nothrow(p.column.data(), p.column.size());
            (*n)++;
        }
    });
}

// Parses a trigger's arguments and looks up its columns into s (whose cxt is set); an ERROR
// naming the trigger and the table for anything wrong. Used when the trigger fires and when
// it is `creating`.
void build_setup(TriggerSetup *s, const char *tgname, int nargs, char **args, Relation rel, bool creating) {
    s->relid = RelationGetRelid(rel);
    s->nitems = 0;
    const char *table = RelationGetRelationName(rel);
    if (nargs < 1 || nargs > 2)
        ereport(
            ERROR,
            (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
             errmsg(
                 "trigger \"%s\" on table \"%s\": bunce_trigger() takes an event id and an optional mapping, got %d arguments",
                 tgname, table, nargs),
             errhint("EXECUTE FUNCTION bunce_trigger('<event uuid>', '{\"email\": \"email_column\"}')")));
    // Hex digits, hyphens and braces only: meant as an id, not as a name.
    const bool uuid_like = strspn(args[0], "0123456789abcdefABCDEF-{}") == strlen(args[0]);
    if (uuid_like && !looks_like_uuid(args[0]))
        ereport(ERROR,
                (errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
                 errmsg("trigger \"%s\" on table \"%s\": event id \"%s\" is not a valid UUID", tgname, table, args[0]),
                 errhint("The first argument is the id of an event created in Bunce, or its name in bunce.events.")));
    s->by_name = !uuid_like;
    s->name_failed = false;
    if (s->by_name) {
        // An event's name from the catalog instead of its id. At CREATE TRIGGER an unknown or
        // ambiguous name is an ERROR, but not while a dump is restored (check_function_bodies
        // off): bunce.events is not in the dump. When the trigger fires it refuses the event,
        // as bunce.on_invalid says.
        s->catalog_version = catalog_version();
        const int found = event_id_by_name(args[0], &s->event_id);
        if (found != 0) {
            CoreError &e = s->name_error;
            e.failed = true;
            e.sqlstate = found == 1 ? ERRCODE_UNDEFINED_OBJECT : ERRCODE_DUPLICATE_OBJECT;
            if (found == 1) {
                snprintf(e.message, sizeof e.message, "bunce event \"%s\" is not in the catalog", args[0]);
                strlcpy(e.hint,
                        "The first argument is an event's id, or its name in bunce.events (case-sensitive). If the "
                        "event was created in Bunce since the last sync, SELECT bunce.refresh_events() syncs now.",
                        sizeof e.hint);
            } else {
                snprintf(e.message, sizeof e.message, "more than one bunce event is named \"%s\"", args[0]);
                snprintf(e.hint, sizeof e.hint,
                         "Pass the event's id instead: SELECT id, description FROM bunce.events WHERE name = %s.",
                         quote_literal_cstr(args[0]));
            }
            if (!creating) {
                s->name_failed = true;
            } else if (check_function_bodies) {
                raise(e, psprintf("trigger \"%s\" on table \"%s\"", tgname, table));
            }
        }
    } else {
        memcpy(&s->event_id, DatumGetUUIDP(DirectFunctionCall1(uuid_in, CStringGetDatum(args[0]))), sizeof(pg_uuid_t));
    }

    MemoryContext old = MemoryContextSwitchTo(s->cxt);
    TupleDesc desc = RelationGetDescr(rel);
    if (nargs == 1) {
        // No mapping: every column under its own name.
        int ncols = 0;
        for (int i = 0; i < desc->natts; i++) ncols += !TupleDescAttr(desc, i)->attisdropped;
        s->items = static_cast<LayoutItem *>(palloc(sizeof(LayoutItem) * ncols));
        s->columns = static_cast<Column *>(palloc(sizeof(Column) * ncols));
        for (int i = 0; i < desc->natts; i++) {
            Form_pg_attribute att = TupleDescAttr(desc, i);
            if (att->attisdropped) continue;
            s->items[s->nitems] = {bunce::MappingItem::field, pstrdup(NameStr(att->attname)), s->nitems, ROLE_NONE};
            add_column(s, rel, att->attnum, s->nitems);
            s->nitems++;
        }
    } else {
        CoreError err;
        int nitems = 0;
        LayoutItem *items = nullptr;
        char **columns = nullptr;
        const bool parsed = parse_mapping_layout(args[1], &items, &columns, &nitems, err);
        MemoryContextSwitchTo(old);
        if (!parsed) raise(err, psprintf("trigger \"%s\" on table \"%s\"", tgname, table));
        MemoryContextSwitchTo(s->cxt);
        s->items = items;
        s->columns = static_cast<Column *>(palloc(sizeof(Column) * nitems));
        int ncols = 0;
        for (int i = 0; i < nitems; i++) {
            if (items[i].kind != bunce::MappingItem::field) continue;
            AttrNumber attnum = InvalidAttrNumber;
            for (int a = 0; a < desc->natts; a++) {
                Form_pg_attribute att = TupleDescAttr(desc, a);
                if (!att->attisdropped && strcmp(NameStr(att->attname), columns[i]) == 0) attnum = att->attnum;
            }
            if (attnum == InvalidAttrNumber) {
                MemoryContextSwitchTo(old);
                ereport(
                    ERROR,
                    (errcode(ERRCODE_UNDEFINED_COLUMN),
                     errmsg(
                         "trigger \"%s\" on table \"%s\": mapping key \"%s\" names column \"%s\", which does not exist",
                         tgname, table, items[i].key, columns[i]),
                     errhint("Map payload keys to columns of \"%s\"; names are case-sensitive.", table)));
            }
            add_column(s, rel, attnum, ncols);
            items[i].column = ncols++;
        }
        s->nitems = nitems;
    }
    MemoryContextSwitchTo(old);
    assign_roles(s);
}

// Whether a function is bunce's trigger: a C function of this library's bunce_trigger_row
// (read from the catalog: another C function's library is not loaded for this).
bool is_bunce_trigger(Oid function) {
    HeapTuple tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(function));
    if (!HeapTupleIsValid(tuple)) return false;
    bool ours = false;
    if (reinterpret_cast<Form_pg_proc>(GETSTRUCT(tuple))->prolang == ClanguageId) {
        FmgrInfo f;
        bool isnull;
        const Datum prosrc = SysCacheGetAttr(PROCOID, tuple, Anum_pg_proc_prosrc, &isnull);
        if (!isnull && strcmp(TextDatumGetCString(prosrc), "bunce_trigger_row") == 0) {
            fmgr_info(function, &f);
            ours = f.fn_addr == bunce_trigger_row;
        }
    }
    ReleaseSysCache(tuple);
    return ours;
}

}  // namespace

TriggerSetup *trigger_setup(TriggerData *td) {
    Trigger *tg = td->tg_trigger;
    Relation rel = td->tg_relation;
    if (!setups) {
        HASHCTL ctl;
        memset(&ctl, 0, sizeof ctl);
        ctl.keysize = sizeof(Oid);
        ctl.entrysize = sizeof(TriggerSetup);
        setups = hash_create("bunce trigger setups", 16, &ctl, HASH_ELEM | HASH_BLOBS);
        CacheRegisterRelcacheCallback(invalidate_setups, 0);
    }
    sweep_setups();
    bool found;
    auto *s = static_cast<TriggerSetup *>(hash_search(setups, &tg->tgoid, HASH_ENTER, &found));
    if (found && s->valid && (!s->by_name || s->catalog_version == catalog_version())) return s;
    // Invalid: one whose building failed, or one sweep_setups() left because a call further up
    // may still use it (then its memory is left be).
    if (found && triggers_running == 0) MemoryContextDelete(s->cxt);
    s->valid = false;
    s->row_slot = nullptr;
    s->cxt = AllocSetContextCreate(CacheMemoryContext, "bunce trigger setup", ALLOCSET_SMALL_SIZES);
    build_setup(s, tg->tgname, tg->tgnargs, tg->tgargs, rel, false);
    s->valid = true;
    return s;
}

[[noreturn]] void refuse_timing(const char *tgname, const char *table) {
    ereport(ERROR,
            (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
             errmsg("trigger \"%s\" on table \"%s\": bunce_trigger() must be an AFTER INSERT, UPDATE or DELETE trigger",
                    tgname, table),
             errhint("An event describes a change that happened: use AFTER.")));
}

[[noreturn]] void refuse_no_transition_table(const char *tgname, const char *table, bool deleting) {
    ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
                    errmsg("trigger \"%s\" on table \"%s\": a statement-level bunce_trigger() needs a transition table",
                           tgname, table),
                    errhint("Add REFERENCING %s TABLE AS changed_rows to CREATE TRIGGER.", deleting ? "OLD" : "NEW")));
}

void check_create_trigger(CreateTrigStmt *stmt) {
    const Oid function = LookupFuncName(stmt->funcname, 0, nullptr, true);
    if (!OidIsValid(function) || !is_bunce_trigger(function)) return;
    Relation rel = table_openrv(stmt->relation, ShareRowExclusiveLock);  // as CREATE TRIGGER will
    const char *table = RelationGetRelationName(rel);
    if ((stmt->timing & (TRIGGER_TYPE_BEFORE | TRIGGER_TYPE_INSTEAD)) || (stmt->events & TRIGGER_TYPE_TRUNCATE))
        refuse_timing(stmt->trigname, table);
    if (!stmt->row) {
        bool has_new = false, has_old = false;
        ListCell *lc;
        foreach (lc, stmt->transitionRels) {
            const auto *t = lfirst_node(TriggerTransition, lc);
            (t->isNew ? has_new : has_old) = true;
        }
        if ((stmt->events & (TRIGGER_TYPE_INSERT | TRIGGER_TYPE_UPDATE)) && !has_new)
            refuse_no_transition_table(stmt->trigname, table, false);
        if ((stmt->events & TRIGGER_TYPE_DELETE) && !has_old) refuse_no_transition_table(stmt->trigname, table, true);
    }
    const int nargs = list_length(stmt->args);
    char **args = static_cast<char **>(palloc(sizeof(char *) * Max(nargs, 1)));
    int i = 0;
    ListCell *lc;
    foreach (lc, stmt->args) args[i++] = strVal(lfirst(lc));
    TriggerSetup probe{};
    probe.cxt = AllocSetContextCreate(CurrentMemoryContext, "bunce trigger check", ALLOCSET_SMALL_SIZES);
    build_setup(&probe, stmt->trigname, nargs, args, rel, true);
    MemoryContextDelete(probe.cxt);
    table_close(rel, NoLock);
}

// After ALTER TABLE ... RENAME COLUMN or DROP COLUMN: a bunce trigger whose
// mapping names a column that is gone would refuse every row from now on. The ALTER goes
// through (the mapping is text, not a dependency), with a WARNING naming the trigger.
void warn_broken_mappings(Node *stmt) {
    RangeVar *rv = nullptr;
    if (IsA(stmt, RenameStmt)) {
        auto *r = castNode(RenameStmt, stmt);
        if (r->renameType == OBJECT_COLUMN) rv = r->relation;
    } else {
        auto *a = castNode(AlterTableStmt, stmt);
        ListCell *lc;
        foreach (lc, a->cmds)
            if (lfirst_node(AlterTableCmd, lc)->subtype == AT_DropColumn) rv = a->relation;
    }
    if (!rv) return;
    const Oid relid = RangeVarGetRelid(rv, NoLock, true);
    if (!OidIsValid(relid)) return;
    CommandCounterIncrement();
    Relation rel = table_open(relid, AccessShareLock);
    TriggerDesc *triggers = rel->trigdesc;
    for (int t = 0; triggers && t < triggers->numtriggers; t++) {
        const Trigger *tg = &triggers->triggers[t];
        if (tg->tgnargs != 2 || !is_bunce_trigger(tg->tgfoid)) continue;
        CoreError err;
        int nitems = 0;
        LayoutItem *items = nullptr;
        char **columns = nullptr;
        // a mapping that does not parse was refused at CREATE TRIGGER
        if (!parse_mapping_layout(tg->tgargs[1], &items, &columns, &nitems, err)) continue;
        for (int i = 0; i < nitems; i++)
            if (items[i].kind == bunce::MappingItem::field && get_attnum(relid, columns[i]) == InvalidAttrNumber)
                ereport(
                    WARNING,
                    (errcode(ERRCODE_UNDEFINED_COLUMN),
                     errmsg(
                         "trigger \"%s\" on table \"%s\": mapping key \"%s\" names column \"%s\", which no longer exists",
                         tg->tgname, RelationGetRelationName(rel), items[i].key, columns[i]),
                     errhint(
                         "Until the mapping is fixed (CREATE OR REPLACE TRIGGER), the trigger refuses every row.")));
    }
    table_close(rel, AccessShareLock);
}

}  // namespace bunce_pg
