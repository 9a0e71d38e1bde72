// The delivery worker: claims due events in short transactions, sends them with libcurl's
// multi interface after the claim committed (never HTTP inside a transaction holding outbox
// rows), and records each answer: delete on 2xx, dead letter on a permanent refusal, back
// off and retry on anything transient. What to do with an answer and how long to wait are
// decided in the core (policy.hpp); the SQL is in worker_sql.cpp, the sender in sender.cpp.
#include <malloc.h>
#include <sys/resource.h>

#include <cstring>

#include "guard.hpp"
#include "http_sender.hpp"
#include "policy.hpp"
#include "sender.hpp"
#include "settings.hpp"
#include "shmem.hpp"
#include "worker.hpp"
#include "worker_sql.hpp"

extern "C" {
#include "common/hashfn.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

PGDLLEXPORT void bunce_worker_main(Datum);
}

namespace bunce_pg {
namespace {

/* ---------------------------------------------------------------------------------------
 * The worker's state between rounds of the loop.
 */
volatile sig_atomic_t stop_requested = false;
volatile sig_atomic_t finishing = false;  // in the last, short transaction before exiting
TimestampTz stop_deadline = 0;            // once stopping: requests in flight have until then
bunce::SenderPause pause;                 // paused by answers (a refused key, the rate limit)
bool extension_ready = false;             // bunce is installed here, at a version this library works with
bool look_for_work = true;                // there may be due events
TimestampTz next_retry_due = 0;           // earliest retry due, 0 when unknown or none
char key_problem[256];                    // why bunce.api_key_file cannot be used, or empty
MemoryContext loop_cxt;                   // reset at the start of every round

int connection_room = 0;  // requests in flight the open files limit allows (see make_room_for_sockets)

// The event catalog's sync (its pages: sender.cpp): at start and every bunce.catalog_refresh
// (0: never on its own), and whenever bunce.refresh_events() asks.
TimestampTz catalog_due = 0;                           // the next sync on its own, 0 when none
int catalog_planned_for = -1;                          // the bunce.catalog_refresh catalog_due was planned for
bool catalog_syncing = false;                          // a sync is under way
bool catalog_page_wanted = false;                      // its next page's request is to be staged
uint64 catalog_ticket = 0;                             // catalog_asked when the sync under way began
TimestampTz catalog_last_end = 0;                      // when the last sync ended
constexpr int64 kCatalogRetryUs = 60 * USECS_PER_SEC;  // after a failed sync, at first
int64 catalog_retry_us = kCatalogRetryUs;              // doubling while syncs fail

constexpr int64 kHousekeepingUs = USECS_PER_SEC;
constexpr int64 kRecountUs = 5 * USECS_PER_SEC;
TimestampTz last_housekeeping = 0;
TimestampTz last_recount = 0;

// What a round decided: may requests start, and how many.
struct Round {
    bool may_send;
    int slots;
    bool limited;      // bunce.rate_limit is set: one request at a time, in turns
    int64 limiter_us;  // > 0: the rate limiter holds the staged request this long
};

// SIGTERM between rounds lets requests in flight finish briefly (see stop_if_done). Inside a
// transaction, a lock wait or a long statement, it is PostgreSQL's own die(): the worker ends
// at the next interrupt check, as any backend would.
void handle_sigterm(SIGNAL_ARGS) {
    stop_requested = true;
    // (At a server shutdown the launcher, stopping too, signals its workers once more.)
    if (in_transaction && !finishing) {
        die(postgres_signal_arg);
        return;
    }
    int save_errno = errno;
    SetLatch(MyLatch);
    errno = save_errno;
}

/* ---------------------------------------------------------------------------------------
 * What bunce.status shows: state, counters; one log line per change of state.
 */

// NOTIFY bunce, so that an application or a script can react without polling:
// {"event": "state", "database", "state", "reason" (a word: key_refused, rate_limited, ...),
// "message", "until", "previous_state", "previous_reason"}.
void notify_state(WorkerState state, const char *kind, const char *reason, TimestampTz until, WorkerState was,
                  const char *was_kind) {
    StringInfoData j;
    initStringInfo(&j);
    appendStringInfoString(&j, "{\"event\": \"state\", \"database\": ");
    escape_json(&j, my_slot->database);
    appendStringInfo(&j, ", \"state\": \"%s\", \"reason\": ", state_name(state));
    escape_json(&j, kind);
    appendStringInfoString(&j, ", \"message\": ");
    escape_json(&j, reason ? reason : "");
    appendStringInfoString(&j, ", \"until\": ");
    if (until)
        escape_json(&j, timestamptz_to_str(until));
    else
        appendStringInfoString(&j, "null");
    appendStringInfo(&j, ", \"previous_state\": \"%s\", \"previous_reason\": ", state_name(was));
    escape_json(&j, was_kind);
    appendStringInfoChar(&j, '}');
    notify(list_make1(j.data));
}

// Returns whether the state or its reason changed. `kind` names the reason for bunce.metrics.
bool set_state(WorkerState state, const char *kind, const char *reason, TimestampTz until) {
    SpinLockAcquire(&my_slot->mutex);
    const bool changed = my_slot->state != state || strcmp(my_slot->paused_reason, reason ? reason : "") != 0;
    const WorkerState was = my_slot->state;
    char was_kind[sizeof my_slot->pause_kind];
    strlcpy(was_kind, my_slot->pause_kind, sizeof was_kind);
    my_slot->state = state;
    strlcpy(my_slot->pause_kind, kind, sizeof my_slot->pause_kind);
    strlcpy(my_slot->paused_reason, reason ? reason : "", sizeof my_slot->paused_reason);
    my_slot->paused_until = until;
    SpinLockRelease(&my_slot->mutex);
    if (!changed) return false;
    notify_state(state, kind, reason, until, was, was_kind);
    if (state == WORKER_RUNNING)
        ereport(LOG, (errmsg("bunce worker: delivering events")));
    else if (state == WORKER_PAUSED && until)
        ereport(LOG, (errmsg("bunce worker: delivery paused until %s: %s", timestamptz_to_str(until), reason)));
    else if (state == WORKER_PAUSED || state == WORKER_DISABLED)
        ereport(LOG, (errmsg("bunce worker: delivery paused: %s", reason)));
    return true;
}

// Requests sent per second over the last minute (for "rate actually used").
int64 second_stamp[60];
int second_count[60];

void count_requests(int n) {
    const int64 sec = GetCurrentTimestamp() / USECS_PER_SEC;
    const int slot = static_cast<int>(sec % 60);
    if (second_stamp[slot] != sec) {
        second_stamp[slot] = sec;
        second_count[slot] = 0;
    }
    second_count[slot] += n;
}

int requests_last_minute() {
    const int64 sec = GetCurrentTimestamp() / USECS_PER_SEC;
    int total = 0;
    for (int i = 0; i < 60; i++)
        if (second_stamp[i] > sec - 60) total += second_count[i];
    return total;
}

void publish(const Recorded &r, const Answer *answers, int nanswers, int oversize) {
    const int delivered = r.delivered, dead = r.dead + oversize;
    const TimestampTz now = GetCurrentTimestamp();
    const int64 minute = now / USECS_PER_MINUTE;
    const int b = static_cast<int>(minute % 60);
    SpinLockAcquire(&my_slot->mutex);
    if (my_slot->bucket_minute[b] != minute) {
        my_slot->bucket_minute[b] = minute;
        my_slot->bucket_delivered[b] = 0;
        my_slot->bucket_failed[b] = 0;
    }
    my_slot->bucket_delivered[b] += delivered;
    my_slot->bucket_failed[b] += dead;
    my_slot->delivered += delivered;
    my_slot->failed += dead;
    my_slot->queued_base -= delivered + dead;
    if (delivered) my_slot->last_success_at = now;
    if (r.last_error) {
        my_slot->last_error_status = r.last_error->status;
        strlcpy(my_slot->last_error, r.last_error->message, sizeof my_slot->last_error);
        my_slot->last_error_at = now;
    }
    for (int i = 0; i < nanswers; i++) my_slot->answers[static_cast<int>(answers[i].answer_class)]++;
    for (int b = 0; b < bunce::kLatencyBuckets; b++) my_slot->latency_buckets[b] += r.latency_buckets[b];
    my_slot->latency_sum_s += r.latency_sum_s;
    my_slot->in_flight = sender_in_flight();
    my_slot->requests_last_minute = requests_last_minute();
    SpinLockRelease(&my_slot->mutex);
}

// The limiter's turns are left to the others: nothing of this worker waits for one.
void leave_turns() {
    SpinLockAcquire(&shared->mutex);
    shared->limiter.set_backlogged(my_slot_index, false);
    SpinLockRelease(&shared->mutex);
}

void worker_exit(int, Datum) {
    leave_turns();
    SpinLockAcquire(&my_slot->mutex);
    my_slot->worker_latch = nullptr;
    my_slot->pid = 0;
    my_slot->state = WORKER_STOPPED;
    my_slot->in_flight = 0;
    SpinLockRelease(&my_slot->mutex);
}

/* ---------------------------------------------------------------------------------------
 * Settings.
 */

// Settings from ALTER DATABASE/ROLE ... SET (which a database owner may make) were applied
// when this session started. The worker runs as a superuser: none of them may change what
// its SQL resolves to (search_path: every statement is schema-qualified, and operators and
// types then resolve in pg_catalog), the role it runs as, or stop it (timeouts, read-only).
void pin_session_settings() {
    static const char *const pinned[][2] = {
        {"search_path", "pg_catalog, pg_temp"},
        {"role", "none"},
        {"statement_timeout", "0"},
        {"lock_timeout", "0"},
        {"idle_in_transaction_session_timeout", "0"},
        {"idle_session_timeout", "0"},
        {"default_transaction_read_only", "off"},
        {"default_transaction_isolation", "read committed"},
        {"default_transaction_deferrable", "off"},
        {"session_replication_role", "origin"},
        {"enable_indexscan", "on"},
        {"enable_indexonlyscan", "on"},
        {"enable_bitmapscan", "on"},
        {"jit", "off"},
        {"seq_page_cost", "1"},
        {"random_page_cost", "4"},
        {"cpu_tuple_cost", "0.01"},
        {"cpu_index_tuple_cost", "0.005"},
        {"cpu_operator_cost", "0.0025"},
        {"plan_cache_mode", "auto"},
        {"synchronous_commit", "on"},  // a delivered event's delete is durable: fewer re-sends
    };
    for (const auto &p : pinned) SetConfigOption(p[0], p[1], PGC_SUSET, PGC_S_OVERRIDE);
}

// Each request in flight holds a socket (two for a moment while it connects). PostgreSQL keeps
// its own files within max_safe_fds, computed from the soft limit on open files the server
// started with, so the sockets need room above that: the soft limit is raised towards the
// hard one. Where the hard limit allows too little, part of PostgreSQL's own share is lent to
// the sockets (AcquireExternalFD, as postgres_fdw does for its connections), short of what its
// wait sets need. Beyond the room fewer requests go out at once, and the log says why: more
// would fail to connect, or make PostgreSQL's own file opens fail. Called after the worker's
// wait set is made (it holds an external descriptor too).
void make_room_for_sockets() {
    constexpr long kMost = 1000;           // bunce.max_in_flight's maximum
    constexpr long kPerRequest = 2;        // descriptors per request, at most
    constexpr long kMargin = 64;           // libcurl's own (epoll, resolver), and slack
    constexpr long kPostgresReserve = 10;  // fd.c's NUM_RESERVED_FDS
    const long postgres_share = max_safe_fds + kPostgresReserve;
    long free_fds = kMost * kPerRequest;  // (no limit)
    rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY) {
        const rlim_t want = static_cast<rlim_t>(postgres_share + kMost * kPerRequest + kMargin);
        if (lim.rlim_cur < want) {
            rlimit raised = lim;
            raised.rlim_cur = lim.rlim_max == RLIM_INFINITY || lim.rlim_max >= want ? want : lim.rlim_max;
            if (setrlimit(RLIMIT_NOFILE, &raised) == 0) lim = raised;
        }
        free_fds = Max(static_cast<long>(lim.rlim_cur) - postgres_share - kMargin, 0L);
    }
    for (long lent = 0; free_fds < kMost * kPerRequest && lent < max_safe_fds / 3 - 8 && AcquireExternalFD(); lent++)
        free_fds++;
    connection_room = static_cast<int>(Max(Min(free_fds / kPerRequest, kMost), 1L));
}

// The requests that may be in flight now.
int in_flight_limit() {
    static int warned_for = 0;
    if (max_in_flight > connection_room && warned_for != max_in_flight) {
        warned_for = max_in_flight;
        ereport(LOG, (errmsg("bunce worker: at most %d requests in flight, not bunce.max_in_flight = %d: the limit "
                             "on open files leaves no room for more sockets",
                             connection_room, max_in_flight),
                      errhint("Raise the hard limit on open files of the PostgreSQL server (LimitNOFILE in its "
                              "systemd unit, or ulimit -Hn) by twice bunce.max_in_flight.")));
    }
    return Min(max_in_flight, connection_room);
}

// bunce.rate_limit is the cluster's: every worker sets the same value on reload, and each goes
// by the shared one (a worker that has not reloaded yet follows the first that has).
void configure_limiter() {
    SpinLockAcquire(&shared->mutex);
    shared->limiter.set_limit(rate_limit);
    SpinLockRelease(&shared->mutex);
}

bool rate_limited() {
    SpinLockAcquire(&shared->mutex);
    const bool limited = shared->limiter.limit() > 0;
    SpinLockRelease(&shared->mutex);
    return limited;
}

// (Re-)reads bunce.api_key_file; what stops it stops delivery (see config_problem).
void reload_api_key() {
    if (load_api_key(key_problem, sizeof key_problem)) key_problem[0] = '\0';
}

// Tells a changed key apart without keeping a copy of it (nor a C++ object alive across
// ProcessConfigFile, which may ERROR).
uint64 key_fingerprint() {
    const char *k = api_key();
    return hash_bytes_extended(reinterpret_cast<const unsigned char *>(k), static_cast<int>(strlen(k)), 0);
}

// Why no new requests may start with these settings, or nullptr.
const char *config_problem() {
    static char problem[256];
    if (key_problem[0]) return key_problem;
    if (!api_key()[0]) return "bunce.api_key is not set";
    CoreError err;
    bool bad = false;
    if (!guarded(err, [&] {
            if (auto p = bunce::api_url_problem(api_url)) {
                strlcpy(problem, p->c_str(), sizeof problem);
                bad = true;
            }
        }))
        return "bunce.api_url could not be checked";
    return bad ? problem : nullptr;
}

/* ---------------------------------------------------------------------------------------
 * The steps of one round of the loop.
 */

// SIGHUP: the settings, the key file, the sender. A new key is tried at once instead of
// waiting out the pause the old one caused.
void reload() {
    if (!ConfigReloadPending) return;
    ConfigReloadPending = false;
    const uint64 old_key = key_fingerprint();
    ProcessConfigFile(PGC_SIGHUP);
    reload_api_key();
    sender_configure();
    configure_limiter();
    if (old_key != key_fingerprint() && pause.auth_backoff_s) {
        pause.until_us = 0;
        pause.auth_backoff_s = 0;
    }
    look_for_work = true;
}

// The extension went away, changed version, or was dropped and created again: what is claimed
// or in flight can no longer be recorded. It is dropped; the rows stay claimed and are sent
// again when delivery starts afresh (as after a crash).
void lose_extension() {
    extension_ready = false;
    leave_turns();
    stop_delivering();
    if (sender_in_flight() > 0 || sender_staged() > 0) note_claims_abandoned();
    sender_abandon_all();
    SpinLockAcquire(&my_slot->mutex);
    my_slot->in_flight = 0;
    SpinLockRelease(&my_slot->mutex);
}

// True once the extension exists here at a version this library works with; on first sight
// (after a start, or after it was created again) delivery starts afresh.
bool wait_for_extension() {
    if (extension_ready) return true;
    char why[256];
    begin("bunce: checking for the extension");
    const ExtensionCheck check = check_extension(why, sizeof why);
    extension_ready = check == EXTENSION_READY;
    if (extension_ready) start_delivering();
    end();
    if (extension_ready) return true;
    // Silent while the extension is just not there yet; an update or a restart to do is
    // worth a line.
    if (set_state(WORKER_WAITING_EXTENSION, "waiting_extension", why, 0) && check == EXTENSION_OTHER_VERSION)
        ereport(LOG, (errmsg("bunce worker: waiting: %s", why)));
    if (stop_requested) proc_exit(1);
    (void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 5000, PG_WAIT_EXTENSION);
    ResetLatch(MyLatch);
    return false;
}

// Starts a sync when one is due or asked for, and stages its next page's request. Under a
// rate limit the request takes a turn as an event's does: only when nothing else is staged.
void plan_catalog(TimestampTz now, bool limited) {
    if (catalog_planned_for != catalog_refresh_s) {  // at start, and when the setting changed
        catalog_planned_for = catalog_refresh_s;
        catalog_due = catalog_refresh_s > 0 ? now : 0;
    }
    if (!catalog_syncing) {
        SpinLockAcquire(&my_slot->mutex);
        const uint64 asked = my_slot->catalog_asked;
        const bool answered = my_slot->catalog_done >= asked;
        SpinLockRelease(&my_slot->mutex);
        if (answered && !(catalog_due && now >= catalog_due)) return;
        catalog_ticket = asked;
        catalog_syncing = catalog_page_wanted = true;
        sender_catalog_start();
    }
    if (catalog_page_wanted && (!limited || sender_staged() == 0)) {
        sender_stage_catalog_page();
        catalog_page_wanted = false;
    }
}

// An event the catalog does not have was claimed, or Bunce answered 404 (an event deleted):
// the catalog is synced again, at most once a minute, unless syncs are off.
void catalog_may_be_stale() {
    // At most a minute after the last sync ended, and not sooner than planned while syncs
    // fail: whoever enqueues unknown events cannot make the worker sync on and on.
    if (catalog_refresh_s == 0 || catalog_retry_us != kCatalogRetryUs) return;
    const TimestampTz at = catalog_last_end + kCatalogRetryUs;
    if (catalog_due == 0 || at < catalog_due) catalog_due = at;
}

// A sync ended: the next one is planned, and whoever waits in bunce.refresh_events() learns
// how it went. A failed sync leaves bunce.events as it was.
void catalog_ended(bool ok, int events, const char *error) {
    const TimestampTz now = GetCurrentTimestamp();
    catalog_syncing = catalog_page_wanted = false;
    catalog_last_end = now;
    const int64 every_us = static_cast<int64>(catalog_refresh_s) * USECS_PER_SEC;
    catalog_due = every_us == 0 ? 0 : now + (ok ? every_us : Min(every_us, catalog_retry_us));
    // One warning when syncs start failing, not one per retry: bunce.status shows the last error.
    if (!ok && catalog_retry_us == kCatalogRetryUs)
        ereport(WARNING, (errmsg("bunce could not sync the event catalog: %s", error),
                          errhint("bunce.events keeps the last catalog synced; the worker tries again.")));
    catalog_retry_us = ok ? kCatalogRetryUs : Min(2 * catalog_retry_us, 64 * kCatalogRetryUs);
    SpinLockAcquire(&my_slot->mutex);
    my_slot->catalog_done = catalog_ticket;
    my_slot->catalog_failed = !ok;
    if (ok) {
        my_slot->catalog_synced_at = now;
        my_slot->catalog_events = events;
        my_slot->catalog_error[0] = '\0';
    } else {
        strlcpy(my_slot->catalog_error, error, sizeof my_slot->catalog_error);
    }
    SpinLockRelease(&my_slot->mutex);
    if (ok) pg_atomic_fetch_add_u64(&shared->catalog_generation, 1);  // backends read the new catalog
    ConditionVariableBroadcast(&my_slot->catalog_cv);
}

// The last page was read: the catalog is stored, and the sync ends.
void store_synced_catalog() {
    char error[256];
    const int stored = store_catalog(sender_catalog_json(), error, sizeof error);
    catalog_ended(stored >= 0, stored, error);
}

// What may start now, published as the worker's state.
Round decide_state(TimestampTz now) {
    if (stop_requested && stop_deadline == 0) stop_deadline = now + 2 * USECS_PER_SEC;
    if (pause.until_us && pause.until_us <= now) {
        pause.until_us = 0;
        look_for_work = true;
    }
    if (next_retry_due && next_retry_due <= now) look_for_work = true;
    const char *problem = config_problem();
    if (stop_requested)
        set_state(WORKER_STOPPED, "stopping", "stopping", 0);
    else if (!enabled)
        set_state(WORKER_DISABLED, "disabled", "bunce.enabled is off", 0);
    else if (problem)
        set_state(WORKER_PAUSED, "configuration", problem, 0);
    else if (pause.until_us)
        set_state(WORKER_PAUSED, pause.kind, pause.reason.c_str(), pause.until_us);
    else
        set_state(WORKER_RUNNING, "", nullptr, 0);
    Round r{!stop_requested && enabled && !problem && !pause.until_us, 0, rate_limited(), 0};
    if (r.may_send) plan_catalog(now, r.limited);
    r.slots = r.may_send ? in_flight_limit() - sender_in_flight() : 0;
    // Under a rate limit, one event is claimed once the last one has gone (see send_staged).
    if (r.limited) r.slots = sender_staged() == 0 ? Min(r.slots, 1) : 0;
    return r;
}

// One transaction: records the answers that arrived, then claims what the free slots allow.
void exchange(const Round &round) {
    Answer *answers = nullptr;
    const int nanswers = sender_collect(&answers, pause);
    const CatalogStep catalog = sender_catalog_step();
    if (catalog != CATALOG_IDLE && catalog != CATALOG_PAGE_OUT) {  // a page's answer came
        SpinLockAcquire(&my_slot->mutex);
        my_slot->in_flight = sender_in_flight();
        SpinLockRelease(&my_slot->mutex);
    }
    if (catalog == CATALOG_NEXT_PAGE) catalog_page_wanted = true;
    if (catalog == CATALOG_FAILED) catalog_ended(false, 0, sender_catalog_error());
    if (catalog == CATALOG_DONE) store_synced_catalog();  // in a transaction of its own
    const bool claiming = round.slots > 0 && look_for_work;
    if (nanswers == 0 && !claiming) return;
    if (claiming) {
        // Before the claim's snapshot: a commit from here on must signal again.
        pg_atomic_write_u32(&my_slot->work_signalled, 0);
        pg_memory_barrier();
    }
    begin("bunce: recording answers and claiming events");
    char why[256];
    if (check_extension(why, sizeof why) != EXTENSION_READY) {
        end();
        lose_extension();
        return;
    }
    Recorded recorded{};
    Claimed claimed{0, 0, false, 0, false};
    if (nanswers > 0) recorded = record_answers(answers, nanswers);
    if (recorded.retried > 0 || recorded.promoted > 0) {
        look_for_work = true;   // unpaused retries and events whose turn came may be due at once
        last_housekeeping = 0;  // bunce.status.waiting_retry: count them this round
    }
    if (claiming && !pause.until_us) {  // an answer may just have paused the sender
        claimed = claim_events(round.slots);
        // a full batch, new rows left, or events whose turn came: maybe more
        look_for_work = claimed.more || claimed.promoted > 0 || claimed.staged + claimed.oversize == round.slots;
        if (!look_for_work) next_retry_due = next_due();
    }
    end();
    bool not_found = false;
    for (int i = 0; i < nanswers; i++) not_found |= answers[i].status == 404;
    if (claimed.unknown_event || not_found) catalog_may_be_stale();
    send_notifications();
    if (nanswers > 0 || claimed.oversize > 0) publish(recorded, answers, nanswers, claimed.oversize);
}

// After the claim committed: the requests go out. Under a rate limit the one staged goes when
// the limiter gives this worker the turn, shared with the workers of other databases; while it
// waits, the others leave it its turns. Returns how long the limiter holds it.
int64 send_staged(const Round &round) {
    const int staged = sender_staged();
    const bool ready = staged > 0 && round.may_send && !pause.until_us;  // (an answer may just have paused it)
    if (round.limited) {
        SpinLockAcquire(&shared->mutex);
        const int64 wait = ready ? shared->limiter.take(bunce::monotonic_us(), my_slot_index) : 0;
        shared->limiter.set_backlogged(my_slot_index, wait > 0);
        SpinLockRelease(&shared->mutex);
        if (wait > 0) return wait;
    }
    if (!ready) return 0;
    sender_submit_staged();
    count_requests(staged);
    SpinLockAcquire(&my_slot->mutex);
    my_slot->in_flight = sender_in_flight();
    my_slot->requests_last_minute = requests_last_minute();
    SpinLockRelease(&my_slot->mutex);
    return 0;
}

void stop_if_done(TimestampTz now) {
    if (!stop_requested || (sender_in_flight() > 0 && now < stop_deadline)) return;
    // A claimed event still waiting for its turn was never sent: it goes back as it was, not
    // as a possible duplicate.
    if (extension_ready && sender_staged() > 0) {
        finishing = true;
        begin("bunce: releasing claims not sent");
        release_unsent(sender_staged_ids());
        end();
    }
    ereport(LOG, (errmsg("bunce worker stopping")));
    proc_exit(1);  // the launcher starts it again, unless its database left the list
}

// Every second: look for due events even if no commit woke the worker (COMMIT PREPARED,
// pg_restore, rows written into the outbox by hand); count the retries waiting, and every
// 5 s the whole queue, releasing claims that no request holds; notice a dropped extension or
// one to update. Every minute: prune bunce.deliveries.
void housekeeping(TimestampTz now) {
    prune_deliveries(now);
    if (now - last_housekeeping < kHousekeepingUs) return;
    last_housekeeping = now;
    look_for_work = true;
    char why[256];
    begin("bunce: housekeeping");
    if (check_extension(why, sizeof why) != EXTENSION_READY) {
        end();
        lose_extension();  // wait for it again; start afresh when it is back
        return;
    }
    const int64 waiting = count_waiting_retry();
    if (now - last_recount >= kRecountUs) {
        last_recount = now;
        release_claims(false);
        release_turns();
        recount_queue();
        check_replica_triggers();
    }
    end();
    SpinLockAcquire(&my_slot->mutex);
    my_slot->waiting_retry = waiting;
    SpinLockRelease(&my_slot->mutex);
}

// Sleeps until the latch (a commit, SIGHUP, SIGTERM), a socket, libcurl's timer, the next
// retry coming due, the rate limiter or the end of a pause.
void wait_for_events(WaitEventSet *wait_set, const Round &round, TimestampTz now, long stats_ms) {
    bunce::WaitInputs in{};
    in.now_us = now;
    in.housekeeping_at_us = last_housekeeping + kHousekeepingUs;
    in.sender_timeout_ms = sender_timeout_ms();
    in.wants_to_claim = (look_for_work && round.may_send) || round.limiter_us > 0;
    in.limiter_wait_us = round.limiter_us;
    in.has_free_slot = sender_in_flight() < in_flight_limit();
    in.next_due_us = next_retry_due;
    if (round.may_send) {  // the catalog's next page, or its next sync
        // (A page waiting for its turn under a rate limit wakes the worker with the limiter.)
        const bool page_now = catalog_page_wanted && (!round.limited || sender_staged() == 0);
        const TimestampTz catalog_at = page_now ? now : catalog_syncing ? 0 : catalog_due;
        if (catalog_at && (!in.next_due_us || catalog_at < in.next_due_us)) in.next_due_us = catalog_at;
    }
    in.paused_until_us = pause.until_us;
    in.stop_deadline_us = stop_requested ? stop_deadline : 0;
    in.stats_ms = stats_ms;
    WaitEvent events[3];
    const int nevents =
        WaitEventSetWait(wait_set, bunce::wait_timeout_ms(in), events, lengthof(events), PG_WAIT_EXTENSION);
    for (int i = 0; i < nevents; i++) {
        if (events[i].events & WL_LATCH_SET) {
            ResetLatch(MyLatch);
            look_for_work = true;
        } else if (events[i].events & WL_SOCKET_READABLE) {
            sender_on_ready();
        }
    }
    sender_on_timeout();
}

void start_worker() {
    pqsignal(SIGHUP, SignalHandlerForConfigReload);
    pqsignal(SIGTERM, handle_sigterm);
    BackgroundWorkerUnblockSignals();
    WorkerArg arg;
    memcpy(&arg, MyBgworkerEntry->bgw_extra, sizeof arg);
    my_slot_index = arg.slot;
    const Oid database = arg.database;
    my_slot = &shared->workers[my_slot_index];
    // The launcher gave the slot to another database while this worker waited to start.
    if (pg_atomic_read_u32(&my_slot->database_id) != database) proc_exit(0);
    before_shmem_exit(worker_exit, 0);
    SpinLockAcquire(&my_slot->mutex);
    my_slot->pid = MyProcPid;
    my_slot->started_at = GetCurrentTimestamp();
    my_slot->state = WORKER_STARTING;
    my_slot->pause_kind[0] = '\0';
    my_slot->paused_reason[0] = '\0';
    SpinLockRelease(&my_slot->mutex);
    BackgroundWorkerInitializeConnectionByOid(database, InvalidOid, 0);
    pin_session_settings();
    reload_api_key();
    // Payload-sized buffers (up to bunce.max_payload_size each) go back to the system when
    // freed: a fixed threshold stops glibc from raising it after the first large free and
    // then keeping such buffers in the heap for good.
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);

    SpinLockAcquire(&my_slot->mutex);
    my_slot->worker_latch = MyLatch;
    SpinLockRelease(&my_slot->mutex);
    ereport(LOG, (errmsg("bunce worker started for database \"%s\"", my_slot->database)));

    sender_start();
    sender_configure();
    configure_limiter();
    loop_cxt = AllocSetContextCreate(TopMemoryContext, "bunce worker loop", ALLOCSET_DEFAULT_SIZES);
}

}  // namespace

// The loop.
void worker_main() {
    start_worker();
    // Made once: libcurl's sockets are all behind one epoll descriptor, so a wake-up costs the
    // same with 1 or 1000 requests in flight.
    WaitEventSet *wait_set = CreateWaitEventSet(TopMemoryContext, 3);
    AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, nullptr);
    AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, nullptr, nullptr);
    AddWaitEventToSet(wait_set, WL_SOCKET_READABLE, sender_poll_fd(), nullptr, nullptr);
    make_room_for_sockets();
    for (;;) {
        MemoryContextReset(loop_cxt);
        MemoryContextSwitchTo(loop_cxt);
        CHECK_FOR_INTERRUPTS();
        reload();
        if (!wait_for_extension()) continue;
        Round round = decide_state(GetCurrentTimestamp());
        exchange(round);
        round.limiter_us = send_staged(round);
        const TimestampTz now = GetCurrentTimestamp();
        stop_if_done(now);
        housekeeping(now);
        // A background worker reports its table statistics itself; without them autovacuum
        // would not see the outbox's deletes and updates.
        const long stats_ms = pgstat_report_stat(false);
        wait_for_events(wait_set, round, now, stats_ms);
    }
}

}  // namespace bunce_pg

void bunce_worker_main(Datum) { bunce_pg::worker_main(); }
