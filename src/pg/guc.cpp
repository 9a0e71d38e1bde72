// The bunce.* settings, defined in one place.
#include <cstdlib>
#include <cstring>

#include "bunce_pg.hpp"

extern "C" {
#include "utils/guc.h"
}

namespace bunce_pg {

char *database;
char *api_url;
int rate_limit;
int max_in_flight;
int request_timeout_ms;
int max_attempts;
bool enabled;
char *ca_file;
int delivery_log_retention_s;
int on_invalid;

namespace {

char *api_key_guc;          // what PostgreSQL stores and shows: always kMask
const char *real_api_key = "";  // the key itself, from the check hook's "extra"
const char *kMask = "********";

// The key never reaches PostgreSQL's own settings machinery. The check hook replaces every
// value, set or not, with the same mask and passes the real one on as "extra". So SHOW,
// pg_settings and current_setting() show only the mask, and the postmaster's
// "parameter changed to" line on reload, printed only when the stored value changes, is
// never printed for it.
bool check_api_key(char **newval, void **extra, GucSource) {
    const char *given = *newval ? *newval : "";
    char *copy = strdup(given);
    char *mask = strdup(kMask);
    if (!copy || !mask) {
        free(copy);
        free(mask);
        return false;
    }
    free(*newval);
    *newval = mask;
    *extra = copy;
    return true;
}

void assign_api_key(const char *, void *extra) {
    real_api_key = extra ? static_cast<const char *>(extra) : "";
}

const char *show_api_key() { return kMask; }

const struct config_enum_entry on_invalid_options[] = {
    {"error", ON_INVALID_ERROR, false},
    {"dead_letter", ON_INVALID_DEAD_LETTER, false},
    {nullptr, 0, false},
};

}  // namespace

const char *api_key() { return real_api_key; }

void define_gucs() {
    DefineCustomStringVariable(
        "bunce.database", "Database whose bunce.outbox the delivery worker drains.", nullptr,
        &database, "postgres", PGC_POSTMASTER, 0, nullptr, nullptr, nullptr);
    DefineCustomStringVariable(
        "bunce.api_url", "Base URL of the Bunce API (events go to <api_url>/events/trigger).",
        "https://, or plain http:// to a loopback address only.", &api_url,
        "https://api.bunce.so/v1", PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
    DefineCustomStringVariable(
        "bunce.api_key", "Bunce secret key (sk_live_... or sk_test_...), sent as X-Authorization.",
        "Never shown: SHOW and pg_settings display a mask.", &api_key_guc, "", PGC_SUSET,
        GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE | GUC_NO_RESET_ALL,
        check_api_key, assign_api_key, show_api_key);
    DefineCustomIntVariable(
        "bunce.rate_limit", "Most requests per minute sent to Bunce (0 = no limit).",
        "Bunce allows 500 per minute per IP address and blocks it for 60 s past that.",
        &rate_limit, 500, 0, 6000000, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable(
        "bunce.max_in_flight", "Most requests to Bunce in flight at once.", nullptr,
        &max_in_flight, 16, 1, 1000, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable(
        "bunce.request_timeout", "Time limit of one request to Bunce.", nullptr,
        &request_timeout_ms, 10000, 100, 600000, PGC_SIGHUP, GUC_UNIT_MS, nullptr, nullptr,
        nullptr);
    DefineCustomIntVariable(
        "bunce.max_attempts", "Attempts before an event that keeps failing is dead-lettered.",
        nullptr, &max_attempts, 20, 1, 1000, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
    DefineCustomBoolVariable(
        "bunce.enabled", "Whether the worker delivers events (off pauses delivery only).",
        "Enqueueing goes on while delivery is paused.", &enabled, true, PGC_SIGHUP, 0, nullptr,
        nullptr, nullptr);
    DefineCustomStringVariable(
        "bunce.ca_file", "CA certificates file for verifying Bunce's TLS certificate.",
        "Empty: the system's CA store.", &ca_file, "", PGC_SIGHUP, 0, nullptr, nullptr,
        nullptr);
    DefineCustomIntVariable(
        "bunce.delivery_log_retention", "How long bunce.deliveries keeps delivered events.",
        "0 turns the delivery log off.", &delivery_log_retention_s, 7 * 24 * 3600, 0, INT_MAX,
        PGC_SIGHUP, GUC_UNIT_S, nullptr, nullptr, nullptr);
    DefineCustomEnumVariable(
        "bunce.on_invalid", "What bunce_trigger does with a payload Bunce would refuse.",
        "error raises an ERROR; dead_letter keeps the event in bunce.dead_letters instead.",
        &on_invalid, ON_INVALID_ERROR, on_invalid_options, PGC_USERSET, 0, nullptr, nullptr,
        nullptr);
    MarkGUCPrefixReserved("bunce");
}

}  // namespace bunce_pg
