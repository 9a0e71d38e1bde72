-- bunce 1.3 -> 1.4: per-customer ordering, and an outbox whose insert maintains one index.
\echo Use "ALTER EXTENSION bunce UPDATE TO '1.4'" to load this file. \quit

-- Ids in causal order: every session takes its ids from the sequence itself (CACHE 1), so an
-- event whose transaction began after another's committed has the larger id. bunce_trigger
-- takes a block of 64 at a time (one sequence access per 64 events) and uses it within its
-- transaction only: a block taken before a commit is never used after it.
ALTER SEQUENCE bunce.event_id_seq INCREMENT BY 64 CACHE 1;
-- Rows written by SQL (bunce.retry_dead_letters, by hand) take their ids the same way.
CREATE FUNCTION bunce.next_event_id() RETURNS bigint
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'bunce_next_event_id';
COMMENT ON FUNCTION bunce.next_event_id() IS 'the next event id of this transaction (the default of bunce.outbox.id)';
REVOKE ALL ON FUNCTION bunce.next_event_id() FROM PUBLIC, bunce_admin;
ALTER TABLE bunce.outbox ALTER COLUMN id SET DEFAULT bunce.next_event_id();

-- ordering_key: a 64-bit hash of the customer (bunce.ordering_key); events of one key are sent
-- one at a time, in id order. scheduled: the worker has placed the row (in flight, waiting for
-- a retry, or waiting for its turn: next_attempt_at = infinity). New rows are not scheduled, so
-- that an insert maintains the primary key only: both other indexes hold scheduled rows.
ALTER TABLE bunce.outbox ADD COLUMN ordering_key bigint,
                         ADD COLUMN scheduled boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN bunce.outbox.ordering_key IS 'hash of the customer (bunce.ordering_key): one event per key at a time';
COMMENT ON COLUMN bunce.outbox.scheduled IS 'placed by the worker: in flight, waiting for a retry, or waiting for its turn (next_attempt_at infinity)';

-- The key of a payload: customer.customer_id, else customer.email, else email.
CREATE FUNCTION bunce.ordering_key(payload jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT hashtextextended(
        CASE WHEN jsonb_typeof(payload -> 'customer' -> 'customer_id') = 'string'
                 THEN 'customer_id:' || (payload -> 'customer' ->> 'customer_id')
             WHEN jsonb_typeof(payload -> 'customer' -> 'email') = 'string'
                 THEN 'email:' || (payload -> 'customer' ->> 'email')
             WHEN jsonb_typeof(payload -> 'email') = 'string'
                 THEN 'email:' || (payload ->> 'email')
        END COLLATE "C", 0)
$$;
COMMENT ON FUNCTION bunce.ordering_key(jsonb) IS
    'the ordering key of a payload: hash of customer.customer_id, else customer.email, else email';

-- The worker places every row again, in id order (their retry times are not kept).
UPDATE bunce.outbox SET ordering_key = bunce.ordering_key(payload);
DROP INDEX bunce.outbox_due_idx;
CREATE INDEX outbox_due_idx ON bunce.outbox (next_attempt_at, id) WHERE scheduled;
CREATE INDEX outbox_key_idx ON bunce.outbox (ordering_key, id) WHERE scheduled;

-- Claims up to max_events events for delivery; returns them, the new rows it placed behind an
-- earlier event of their key (parked: no payload), and last a row with only `covered`: every
-- new row with an id up to it was placed (NULL: every one it saw). Called by the worker only,
-- in a transaction that commits before any request is sent. New rows are looked for above
-- after_id, and from the first id of each transaction in (open_xids, open_firsts) that has
-- ended: those held ids that their commit may have placed below after_id. claim_for is how
-- long a claim may last.
DROP FUNCTION bunce.claim(integer);
CREATE FUNCTION bunce.claim(max_events integer, after_id bigint DEFAULT 0, ordered boolean DEFAULT true,
                            claim_for interval DEFAULT '5 minutes', open_xids xid8[] DEFAULT '{}',
                            open_firsts bigint[] DEFAULT '{}')
RETURNS TABLE (id bigint, attempts integer, event_id uuid, payload jsonb, idempotency_key uuid, parked boolean,
               covered bigint)
LANGUAGE plpgsql VOLATILE STRICT
-- one plan for all calls: replanning each claim would cost more than running it
SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    t timestamptz := statement_timestamp();
    taken integer;
    scan integer := 2 * max_events + 32;
BEGIN
    -- Scheduled rows that are due: retries, and events whose turn came. A claimed row is due
    -- again only when its claim has run out (next_attempt_at), so the scan never walks over
    -- the requests in flight.
    RETURN QUERY
    UPDATE bunce.outbox o
    SET sending_since = t, attempts = o.attempts + 1, next_attempt_at = t + claim_for,
        first_attempt_at = coalesce(o.first_attempt_at, t)
    FROM (SELECT c.id FROM bunce.outbox c
          WHERE c.scheduled AND c.next_attempt_at <= t AND c.sending_since IS NULL
          ORDER BY c.next_attempt_at, c.id
          LIMIT max_events
          FOR UPDATE SKIP LOCKED) due
    WHERE o.id = due.id
    RETURNING o.id, o.attempts, o.event_id, o.payload, o.idempotency_key, false, NULL::bigint;
    GET DIAGNOSTICS taken = ROW_COUNT;

    -- New rows, in id order through the primary key. A row is sent now when it is the first
    -- of its key here and its key has no scheduled row; else it is parked. Heads are placed
    -- while max_events allows, so that a row is never placed before an earlier row of its key.
    -- A row locked by someone else is skipped, and so is the rest of its key; the rows of its
    -- transaction that ended are seen in this statement's snapshot, as the rows they precede.
    RETURN QUERY
    WITH fresh AS (
        SELECT c.id, c.ordering_key AS k FROM bunce.outbox c
        WHERE c.id >= (SELECT least(after_id + 1, min(r.first))
                       FROM unnest(open_xids, open_firsts) AS r(x, first)
                       WHERE pg_visible_in_snapshot(r.x, pg_current_snapshot()))
          AND NOT c.scheduled
          AND c.sending_since IS NULL  -- a claim restored or written by hand: see release_claims
        ORDER BY c.id
        LIMIT scan),
    placed AS (
        SELECT f.id, f.k,
               NOT ordered OR f.k IS NULL
               OR (row_number() OVER (PARTITION BY f.k ORDER BY f.id) = 1
                   AND NOT EXISTS (SELECT FROM bunce.outbox s
                                   WHERE s.ordering_key = f.k AND s.scheduled
                                   ORDER BY s.ordering_key, s.id LIMIT 1)) AS head
        FROM fresh f),
    counted AS (
        SELECT p.id, p.k, p.head, count(*) FILTER (WHERE p.head) OVER (ORDER BY p.id) AS heads FROM placed p),
    chosen AS (
        SELECT n.* FROM counted n WHERE n.heads <= max_events - taken),
    free AS (
        SELECT c.id FROM bunce.outbox c WHERE c.id IN (SELECT ch.id FROM chosen ch) FOR UPDATE SKIP LOCKED),
    blocked AS (
        SELECT ch.id, ch.k FROM chosen ch WHERE ch.id NOT IN (SELECT free.id FROM free)),
    done AS (
        UPDATE bunce.outbox o
        SET scheduled = true,
            sending_since = CASE WHEN ch.head THEN t END,
            attempts = o.attempts + CASE WHEN ch.head THEN 1 ELSE 0 END,
            next_attempt_at = CASE WHEN ch.head THEN t + claim_for ELSE 'infinity' END,
            first_attempt_at = CASE WHEN ch.head THEN coalesce(o.first_attempt_at, t) ELSE o.first_attempt_at END
        FROM chosen ch
        WHERE o.id = ch.id AND ch.id IN (SELECT free.id FROM free)
          AND NOT (ordered AND EXISTS (SELECT FROM blocked b WHERE b.k = ch.k))
        RETURNING o.id, o.attempts, o.event_id, CASE WHEN ch.head THEN o.payload END AS payload, o.idempotency_key,
                  NOT ch.head AS parked)
    SELECT d.*, NULL::bigint FROM done d
    UNION ALL
    -- not placed: blocked rows, heads beyond max_events, and what a full scan left
    SELECT NULL, NULL, NULL, NULL, NULL, NULL,
           least((SELECT min(b.id) - 1 FROM blocked b),
                 (SELECT min(n.id) - 1 FROM counted n WHERE n.heads > max_events - taken),
                 CASE WHEN (SELECT count(*) FROM fresh) = scan THEN (SELECT max(f.id) FROM fresh f) END);
END
$$;
REVOKE ALL ON FUNCTION bunce.claim(integer, bigint, boolean, interval, xid8[], bigint[]) FROM PUBLIC, bunce_admin;

-- A redriven dead letter is a replay: a new id, so that it is sent after whatever is pending
-- for its key; the same idempotency key.
CREATE OR REPLACE FUNCTION bunce.retry_dead_letters(ids bigint[] DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    moved bigint;
BEGIN
    WITH gone AS (
        DELETE FROM bunce.dead_letters d
        WHERE (ids IS NULL OR d.id = ANY (ids))
          AND d.reason <> 'invalid'  -- refused by bunce_trigger: would be refused again
        RETURNING d.*)
    INSERT INTO bunce.outbox (event_id, payload, idempotency_key, enqueued_at, ordering_key)
    SELECT g.event_id, g.payload, g.idempotency_key, g.enqueued_at, bunce.ordering_key(g.payload)
    FROM gone g ORDER BY g.id;
    GET DIAGNOSTICS moved = ROW_COUNT;
    PERFORM bunce.notify_enqueued(moved);
    RETURN moved;
END
$$;
COMMENT ON FUNCTION bunce.retry_dead_letters(bigint[]) IS
    'enqueue dead letters (NULL = all) again, after what is pending for their customer; returns how many';

-- bunce.status counts the events waiting for their turn.
DROP VIEW bunce.status;
DROP FUNCTION bunce.worker_state();
CREATE FUNCTION bunce.worker_state(
    OUT state text, OUT pid integer, OUT paused_reason text, OUT paused_until timestamptz,
    OUT queued bigint, OUT in_flight integer, OUT waiting_retry bigint,
    OUT delivered bigint, OUT failed bigint, OUT possibly_duplicated bigint,
    OUT delivered_last_hour bigint, OUT failed_last_hour bigint,
    OUT requests_last_minute integer, OUT last_success_at timestamptz,
    OUT last_error_status integer, OUT last_error text, OUT last_error_at timestamptz,
    OUT started_at timestamptz, OUT waiting_turn bigint)
    RETURNS record LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'bunce_worker_state';
CREATE VIEW bunce.status AS
SELECT w.state,
       w.pid,
       w.paused_reason,
       w.paused_until,
       w.queued,
       greatest(w.queued - w.waiting_retry - w.waiting_turn - w.in_flight, 0) AS due_now,
       w.waiting_retry,
       w.waiting_turn,
       w.in_flight,
       (SELECT count(*) FROM bunce.dead_letters) AS dead_letters,
       now() - (SELECT o.enqueued_at FROM bunce.outbox o ORDER BY o.id LIMIT 1) AS oldest_pending_age,
       w.delivered,
       w.failed,
       w.delivered_last_hour,
       w.failed_last_hour,
       w.possibly_duplicated,
       w.last_success_at,
       w.last_error_status,
       w.last_error,
       w.last_error_at,
       current_setting('bunce.rate_limit')::integer AS rate_limit,
       w.requests_last_minute,
       w.started_at
FROM bunce.worker_state() w;
COMMENT ON VIEW bunce.status IS 'one row: delivery worker state, queue, counters, last error';
REVOKE ALL ON FUNCTION bunce.worker_state() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bunce.worker_state() TO bunce_admin;
REVOKE ALL ON bunce.status FROM PUBLIC;
GRANT SELECT ON bunce.status TO bunce_admin;
REVOKE ALL ON FUNCTION bunce.ordering_key(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bunce.ordering_key(jsonb) TO bunce_admin;
