// The worker's C++ side (sender.cpp): libcurl sender, what is in flight. Each
// function runs its C++ inside guarded() and raises the ERROR afterwards, so callers only
// ever see plain palloc'd data.
#pragma once

#include "metrics.hpp"
#include "policy.hpp"

extern "C" {
#include "postgres.h"
}

namespace bunce_pg {

// One answer, classified, with the policy's decision (bunce::decide_answer).
struct Answer {
    int64 id;
    int attempts;           // the row's attempts when it was claimed
    char *idempotency_key;  // the row's key: with id and attempts, the claim answered
    int status;             // HTTP status, 0 when there was no answer
    bunce::Outcome outcome;
    bunce::AnswerClass answer_class;  // for bunce_answers_total
    bunce::AnswerDecision decision;
    char *message;
    char *response;  // Bunce's answer body, bounded and cleaned ("" when none)
};

void sender_start();
// Applies the settings (URL, key, timeouts, proxy); after each reload.
void sender_configure();
// A claimed event's request, sent by sender_submit_staged() once the claim has committed.
void sender_stage(int64 id, int attempts, const char *event_id, const char *payload, const char *key);
void sender_submit_staged();
// Answers that arrived, decided; returns how many, *out palloc'd. Updates `pause`.
int sender_collect(Answer **out, bunce::SenderPause &pause);

// The event catalog's sync, page by page (GET /events): the answers come in through
// sender_collect, which reads them; sender_catalog_step() then says what is next.
enum CatalogStep {
    CATALOG_IDLE,       // no sync under way
    CATALOG_PAGE_OUT,   // a page's request is staged or in flight
    CATALOG_NEXT_PAGE,  // a page was read: stage the next one
    CATALOG_DONE,       // the last page was read: store the catalog (sender_catalog_json)
    CATALOG_FAILED      // the sync failed (sender_catalog_error); the catalog stays as it was
};
void sender_catalog_start();
void sender_stage_catalog_page();
// What the answers collected last made of the sync; DONE and FAILED are said once (then IDLE).
CatalogStep sender_catalog_step();
// The events read, as a JSON array of {id, name, description, parameters}, palloc'd.
char *sender_catalog_json();
char *sender_catalog_error();

int sender_poll_fd();      // readable when a socket needs attention
long sender_timeout_ms();  // libcurl's timer, -1 when none
void sender_on_ready();
void sender_on_timeout();
// Drops what is staged and in flight: nothing of it will be answered (when the extension went
// away or changed; the rows stay claimed and are released when delivery starts again).
void sender_abandon_all();
int sender_in_flight();
int sender_staged();        // claimed, not sent yet
Datum sender_staged_ids();  // their outbox ids, a bigint[]
// The outbox ids of the requests claimed or in flight, as a bigint[].
Datum sender_held_ids();

}  // namespace bunce_pg
