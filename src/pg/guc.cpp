// The bunce.* settings, defined in one place, and the API key (bunce.api_key or
// bunce.api_key_file), which only the server configuration may hold.
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "database_list.hpp"
#include "guard.hpp"
#include "settings.hpp"

extern "C" {
#include "miscadmin.h"
#include "utils/guc.h"
}

namespace bunce_pg {

char *database;
char *api_url;
int rate_limit;
int max_in_flight;
int request_timeout_ms;
int catalog_refresh_s;
int max_attempts;
bool enabled;
char *ca_file;
int delivery_log_retention_s;
int on_invalid;
int ordering;
char *api_key_file;
char *https_proxy;
int max_payload_size;

namespace {

char *api_key_guc;              // what PostgreSQL stores and shows: always kMask
const char *real_api_key = "";  // the key itself, from the check hook's "extra"
const char *kMask = "********";

// The key never reaches PostgreSQL's own settings machinery. The check hook replaces every
// value, set or not, with the same mask and passes the real one on as "extra". So SHOW,
// pg_settings and current_setting() show only the mask, and the postmaster's
// "parameter changed to" line on reload, printed only when the stored value changes, is
// never printed for it. Only the server configuration may hold the key: a value from
// ALTER DATABASE/ROLE ... SET (readable by every role in pg_db_role_setting), a client's
// startup options or SET is refused.
bool check_api_key(char **newval, void **extra, GucSource source) {
    const char *given = *newval ? *newval : "";
    char *copy = strdup(given);
    char *mask = strdup(kMask);
    if (!copy || !mask) {
        free(copy);
        free(mask);
        return false;
    }
    free(*newval);
    *newval = mask;  // first: PostgreSQL quotes the refused value in some messages
    const bool server_config = source <= PGC_S_ARGV;
    if (!server_config) {
        free(copy);
        GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
        GUC_check_errmsg("bunce.api_key can be set only in the server configuration");
        GUC_check_errhint(
            "Use ALTER SYSTEM SET bunce.api_key or postgresql.conf, or point "
            "bunce.api_key_file at a file, then reload.");
        return false;
    }
    *extra = copy;
    return true;
}

void assign_api_key(const char *, void *extra) { real_api_key = extra ? static_cast<const char *>(extra) : ""; }

const char *show_api_key() { return kMask; }

const struct config_enum_entry on_invalid_options[] = {
    {"error", ON_INVALID_ERROR, false},
    {"dead_letter", ON_INVALID_DEAD_LETTER, false},
    {nullptr, 0, false},
};
const struct config_enum_entry ordering_options[] = {
    {"customer", ORDERING_CUSTOMER, false},
    {"none", ORDERING_NONE, false},
    {nullptr, 0, false},
};

// bunce.database must parse; the launcher and check_served_database() read it again.
bool check_database(char **newval, void **, GucSource) {
    DatabaseList list;
    char problem[256];
    if (parse_databases(*newval, &list, problem, sizeof problem)) return true;
    problem[0] = pg_toupper(static_cast<unsigned char>(problem[0]));  // a sentence
    GUC_check_errdetail("%s.", problem);
    GUC_check_errhint("List database names, separated by commas; double-quote a name that holds a comma.");
    return false;
}

char file_key[1024];  // the key read from bunce.api_key_file by load_api_key()

}  // namespace

bool parse_databases(const char *text, DatabaseList *out, char *problem, size_t size) {
    CoreError err;
    bool ok = false;
    const bool ran = guarded(err, [&] {
        std::vector<std::string> names;
        std::string why;
        ok = bunce::parse_database_list(text, kMaxDatabases, NAMEDATALEN - 1, names, why);
        if (!ok) {
            strlcpy(problem, why.c_str(), size);
            return;
        }
        out->count = static_cast<int>(names.size());
        for (size_t i = 0; i < names.size(); i++) strlcpy(out->names[i], names[i].c_str(), NAMEDATALEN);
    });
    if (!ran) strlcpy(problem, err.message, size);
    return ran && ok;
}

const char *api_key() { return api_key_file[0] ? file_key : real_api_key; }

// Reads bunce.api_key_file into file_key. It must be a regular file of the server's OS user
// that nobody else may read, as PostgreSQL demands of ssl_key_file. The key is the first line,
// without surrounding whitespace. Returns false with the reason (never the file's content).
bool load_api_key(char *problem, size_t size) {
    file_key[0] = '\0';
    if (!api_key_file[0]) return true;
    // Non-blocking: a FIFO would otherwise hang the worker (and shutdown) in open().
    const int fd = open(api_key_file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ELOOP)
            snprintf(problem, size, "bunce.api_key_file must name the file itself, not a symbolic link");
        else
            snprintf(problem, size, "bunce.api_key_file could not be opened: %s", strerror(errno));
        return false;
    }
    struct stat st;
    char buf[sizeof file_key + 1];
    ssize_t n = -1;
    if (fstat(fd, &st) != 0)
        snprintf(problem, size, "bunce.api_key_file could not be read: %s", strerror(errno));
    else if (!S_ISREG(st.st_mode))
        snprintf(problem, size, "bunce.api_key_file is not a regular file");
    else if (st.st_uid != geteuid())
        snprintf(problem, size, "bunce.api_key_file must be owned by the database server's user");
    else if (st.st_mode & (S_IRWXG | S_IRWXO))
        snprintf(problem, size, "bunce.api_key_file is accessible to other users: make it u=rw (chmod 600)");
    else if ((n = read(fd, buf, sizeof buf - 1)) < 0)
        snprintf(problem, size, "bunce.api_key_file could not be read: %s", strerror(errno));
    close(fd);
    if (n < 0) return false;
    buf[n] = '\0';
    char *start = buf;
    while (*start == ' ' || *start == '\t' || *start == '\r' || *start == '\n') start++;
    size_t len = strcspn(start, "\r\n");
    while (len > 0 && (start[len - 1] == ' ' || start[len - 1] == '\t')) len--;
    if (len == 0) {
        snprintf(problem, size, "bunce.api_key_file holds no key");
        return false;
    }
    if (len >= sizeof file_key) {
        snprintf(problem, size, "bunce.api_key_file holds a line too long to be a key");
        return false;
    }
    memcpy(file_key, start, len);
    file_key[len] = '\0';
    explicit_bzero(buf, sizeof buf);
    return true;
}

void define_gucs() {
    DefineCustomStringVariable("bunce.database", "Databases whose bunce.outbox is delivered, one worker each.",
                               "A comma-separated list; the workers share bunce.rate_limit.", &database, "postgres",
                               PGC_SIGHUP, 0, check_database, nullptr, nullptr);
    DefineCustomStringVariable("bunce.api_url", "Base URL of the Bunce API (events go to <api_url>/events/trigger).",
                               "https://, or plain http:// to a loopback address only.", &api_url,
                               "https://api.bunce.so/v1", PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
    DefineCustomStringVariable("bunce.api_key",
                               "Bunce secret key (sk_live_... or sk_test_...), sent as X-Authorization.",
                               "Never shown: SHOW and pg_settings display a mask.", &api_key_guc, "", PGC_SUSET,
                               GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE | GUC_NO_RESET_ALL,
                               check_api_key, assign_api_key, show_api_key);
    DefineCustomStringVariable("bunce.api_key_file",
                               "File holding the Bunce secret key; when set, it is used instead of bunce.api_key.",
                               "Re-read on reload. The file must belong to the server's OS user, mode 600.",
                               &api_key_file, "", PGC_SIGHUP, GUC_SUPERUSER_ONLY, nullptr, nullptr, nullptr);
    DefineCustomStringVariable(
        "bunce.https_proxy", "Proxy for https:// requests to Bunce (empty: none).",
        "Proxy settings of the server's environment are ignored; plain http:// never uses a proxy.", &https_proxy, "",
        PGC_SIGHUP, GUC_SUPERUSER_ONLY, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("bunce.max_payload_size", "Largest payload, as JSON text, that an event may have.",
                            "Bounds the worker's memory: at most bunce.max_in_flight payloads of this size are held.",
                            &max_payload_size, 256 * 1024, 1024, 16 * 1024 * 1024, PGC_SIGHUP, GUC_UNIT_BYTE, nullptr,
                            nullptr, nullptr);
    DefineCustomIntVariable("bunce.rate_limit", "Most requests per minute sent to Bunce (0 = no limit).",
                            "Bunce allows 500 per minute per IP address and blocks it for 60 s past that.", &rate_limit,
                            500, 0, 6000000, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("bunce.max_in_flight", "Most requests to Bunce in flight at once.", nullptr, &max_in_flight,
                            16, 1, 1000, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("bunce.request_timeout", "Time limit of one request to Bunce.", nullptr,
                            &request_timeout_ms, 10000, 100, 600000, PGC_SIGHUP, GUC_UNIT_MS, nullptr, nullptr,
                            nullptr);
    DefineCustomIntVariable(
        "bunce.catalog_refresh",
        "How often the worker syncs the event catalog (bunce.events) from Bunce; 0: only when asked.", nullptr,
        &catalog_refresh_s, 600, 0, 7 * 24 * 3600, PGC_SIGHUP, GUC_UNIT_S, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("bunce.max_attempts", "Attempts before an event that keeps failing is dead-lettered.",
                            nullptr, &max_attempts, 20, 1, 1000, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
    DefineCustomBoolVariable("bunce.enabled", "Whether the worker delivers events (off pauses delivery only).",
                             "Enqueueing goes on while delivery is paused.", &enabled, true, PGC_SIGHUP, 0, nullptr,
                             nullptr, nullptr);
    DefineCustomStringVariable("bunce.ca_file", "CA certificates file for verifying Bunce's TLS certificate.",
                               "Empty: the system's CA store.", &ca_file, "", PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("bunce.delivery_log_retention", "How long bunce.deliveries keeps delivered events.",
                            "0 turns the delivery log off.", &delivery_log_retention_s, 7 * 24 * 3600, 0, INT_MAX,
                            PGC_SIGHUP, GUC_UNIT_S, nullptr, nullptr, nullptr);
    DefineCustomEnumVariable("bunce.on_invalid", "What bunce_trigger does with a payload Bunce would refuse.",
                             "error raises an ERROR; dead_letter keeps the event in bunce.dead_letters instead.",
                             &on_invalid, ON_INVALID_ERROR, on_invalid_options, PGC_USERSET, 0, nullptr, nullptr,
                             nullptr);
    DefineCustomEnumVariable("bunce.ordering", "Whether the events of one customer are sent one at a time, in order.",
                             "customer: per customer_id, else customer email, else email; none: all in parallel.",
                             &ordering, ORDERING_CUSTOMER, ordering_options, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
    MarkGUCPrefixReserved("bunce");
}

}  // namespace bunce_pg
