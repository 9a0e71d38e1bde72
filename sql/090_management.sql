-- Management functions: bunce.retry_dead_letters(), bunce.discard_dead_letters(), bunce.status.
CREATE EXTENSION bunce;

-- Dead letters as the worker leaves them (written by hand here: no worker in this database).
INSERT INTO bunce.dead_letters (id, event_id, payload, idempotency_key, reason, http_status, message,
                                attempts, enqueued_at, first_attempt_at, last_attempt_at, dead_since)
VALUES
    (101, '9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "a@example.com"}', 'a0000000-0000-4000-8000-000000000101',
     'rejected', 422, 'first_name is required and must be present', 1,
     '2024-05-01 10:00:00+00', '2024-05-01 10:00:01+00', '2024-05-01 10:00:01+00', now() - interval '10 days'),
    (102, '9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "b@example.com"}', 'a0000000-0000-4000-8000-000000000102',
     'rejected', 404, 'event not found', 1,
     '2024-05-01 10:00:00+00', '2024-05-01 10:00:01+00', '2024-05-01 10:00:01+00', now() - interval '1 hour'),
    (103, '9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "c@example.com"}', 'a0000000-0000-4000-8000-000000000103',
     'attempts_exhausted', 503, 'Service Unavailable', 20,
     '2024-05-01 10:00:00+00', '2024-05-01 10:00:01+00', '2024-05-02 10:00:00+00', now() - interval '3 days'),
    (104, '9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "nope"}', 'a0000000-0000-4000-8000-000000000104',
     'invalid', NULL, 'payload field "email" is not a well-formed email address', 0,
     '2024-05-01 10:00:00+00', NULL, NULL, now() - interval '10 days'),
    (105, '9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "e@example.com"}', 'a0000000-0000-4000-8000-000000000105',
     'rejected', 400, 'bad request', 1,
     '2024-05-01 10:00:00+00', '2024-05-01 10:00:01+00', '2024-05-01 10:00:01+00', now() - interval '10 days');

-- Each says what to do about it.
SELECT id, reason, http_status, advice FROM bunce.dead_letters ORDER BY id;

-- Retry the given ids: back to the outbox as a replay, with a new id (after whatever is
-- pending for the customer) and the same idempotency key, due now; 'invalid' ones are skipped
-- (bunce_trigger would refuse them again).
SELECT bunce.retry_dead_letters(ARRAY[101, 104]) AS retried;
SELECT id, event_id, payload, idempotency_key, attempts, sending_since, first_attempt_at, last_status,
       last_error, possible_duplicate, enqueued_at, next_attempt_at <= now() AS due,
       ordering_key = bunce.ordering_key(payload) AS keyed, scheduled
FROM bunce.outbox ORDER BY id;
SELECT id, reason FROM bunce.dead_letters ORDER BY id;
-- unknown ids: nothing
SELECT bunce.retry_dead_letters(ARRAY[999]) AS retried;
-- all of them (NULL): the rejected and exhausted ones move, the invalid one stays
SELECT bunce.retry_dead_letters() AS retried;
SELECT id, idempotency_key, payload FROM bunce.outbox ORDER BY id;
SELECT id, reason FROM bunce.dead_letters ORDER BY id;
SELECT bunce.retry_dead_letters() AS retried_again;
-- a retry is rolled back with its transaction
BEGIN;
INSERT INTO bunce.dead_letters (id, event_id, payload, idempotency_key, reason, message, attempts, enqueued_at)
VALUES (106, '9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "f@example.com"}', 'a0000000-0000-4000-8000-000000000106',
        'rejected', 'x', 1, '2024-05-01 10:00:00+00');
SELECT bunce.retry_dead_letters() AS retried;
ROLLBACK;
SELECT count(*) AS queued FROM bunce.outbox;

-- Discard: by ids, by age, both, all.
INSERT INTO bunce.dead_letters (id, event_id, payload, idempotency_key, reason, message, attempts, enqueued_at, dead_since)
SELECT 200 + i, '9bb6215c-e2b1-4e51-abff-3a96ca185088', jsonb_build_object('email', 'x@example.com', 'i', i),
       gen_random_uuid(), 'rejected', 'refused', 1, '2024-05-01 10:00:00+00', now() - i * interval '1 day'
FROM generate_series(1, 6) i;
SELECT bunce.discard_dead_letters(ARRAY[201, 202, 999]) AS discarded;
SELECT bunce.discard_dead_letters(older_than => interval '4 days 12 hours') AS discarded;
SELECT id FROM bunce.dead_letters ORDER BY id;
SELECT bunce.discard_dead_letters(ARRAY[203, 104], interval '7 days') AS discarded;
SELECT bunce.discard_dead_letters(ARRAY[203, 104], interval '1 day') AS discarded;
SELECT id FROM bunce.dead_letters ORDER BY id;
SELECT bunce.discard_dead_letters() AS discarded;
SELECT count(*) AS dead FROM bunce.dead_letters;

-- Both are SECURITY DEFINER with a fixed search_path.
SELECT p.oid::regprocedure AS function, p.prosecdef, p.proconfig
FROM pg_proc p WHERE p.pronamespace = 'bunce'::regnamespace AND p.proname LIKE '%dead_letters'
ORDER BY p.oid::regprocedure::text;

-- bunce.status: one row. Only what does not depend on the worker or the clock is shown.
SELECT count(*) AS rows FROM bunce.status;
SELECT state IS NOT NULL AS has_state, rate_limit, dead_letters,
       oldest_pending_age IS NOT NULL AS has_pending
FROM bunce.status;
TRUNCATE bunce.outbox;
SELECT dead_letters, oldest_pending_age FROM bunce.status;
SELECT array_agg(attname ORDER BY attnum) AS status_columns
FROM pg_attribute WHERE attrelid = 'bunce.status'::regclass AND attnum > 0;

DROP EXTENSION bunce;
