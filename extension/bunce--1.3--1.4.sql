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
-- The due index holds the rows that wait (for a retry or for their turn), not those in flight.
CREATE INDEX outbox_due_idx ON bunce.outbox (next_attempt_at, id) WHERE scheduled AND sending_since IS NULL;
CREATE INDEX outbox_key_idx ON bunce.outbox (ordering_key, id) WHERE scheduled;

-- Claims up to max_events events for delivery: due scheduled rows, then new rows in id order
-- (above after_id, and from the first id of each transaction in (open_xids, open_firsts)
-- that has ended: those held ids that their commit may have placed below after_id). A new row
-- is sent when it is the first of its key here and nothing of its key is scheduled; else it is
-- parked (returned with no payload). Last comes a row with only `covered`: every new row with
-- an id up to it was placed (NULL: every one seen). Called by the worker only, in a
-- transaction that commits before any request is sent. (src/pg/claim.cpp)
DROP FUNCTION bunce.claim(integer);
CREATE FUNCTION bunce.claim(max_events integer, after_id bigint DEFAULT 0, ordered boolean DEFAULT true,
                            open_xids xid8[] DEFAULT '{}', open_firsts bigint[] DEFAULT '{}')
RETURNS TABLE (id bigint, attempts integer, event_id uuid, payload jsonb, idempotency_key uuid, parked boolean,
               covered bigint)
LANGUAGE c VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'bunce_claim';
REVOKE ALL ON FUNCTION bunce.claim(integer, bigint, boolean, xid8[], bigint[]) FROM PUBLIC, bunce_admin;

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
    OUT started_at timestamptz, OUT waiting_turn bigint,
    OUT catalog_synced_at timestamptz, OUT catalog_events integer, OUT catalog_error text)
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
       w.started_at,
       w.catalog_synced_at,
       w.catalog_events,
       w.catalog_error
FROM bunce.worker_state() w;
COMMENT ON VIEW bunce.status IS 'one row: delivery worker state, queue, counters, last error';
REVOKE ALL ON FUNCTION bunce.worker_state() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bunce.worker_state() TO bunce_admin;
REVOKE ALL ON bunce.status FROM PUBLIC;
GRANT SELECT ON bunce.status TO bunce_admin;
REVOKE ALL ON FUNCTION bunce.ordering_key(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bunce.ordering_key(jsonb) TO bunce_admin;

-- Logical replication: an event is sent by the database where it was enqueued. What a
-- subscription applies to bunce's tables is dropped (src/pg/replicated.cpp): the trigger is
-- enabled for replica sessions only, so no other session fires it.
CREATE FUNCTION bunce.ignore_replicated() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'bunce_ignore_replicated';
COMMENT ON FUNCTION bunce.ignore_replicated() IS 'drops the changes a subscription applies to bunce''s tables';
REVOKE ALL ON FUNCTION bunce.ignore_replicated() FROM PUBLIC, bunce_admin;
CREATE TRIGGER ignore_replicated BEFORE INSERT OR UPDATE OR DELETE ON bunce.outbox
    FOR EACH ROW EXECUTE FUNCTION bunce.ignore_replicated();
ALTER TABLE bunce.outbox ENABLE REPLICA TRIGGER ignore_replicated;
CREATE TRIGGER ignore_replicated BEFORE INSERT OR UPDATE OR DELETE ON bunce.dead_letters
    FOR EACH ROW EXECUTE FUNCTION bunce.ignore_replicated();
ALTER TABLE bunce.dead_letters ENABLE REPLICA TRIGGER ignore_replicated;
CREATE TRIGGER ignore_replicated BEFORE INSERT OR UPDATE OR DELETE ON bunce.deliveries
    FOR EACH ROW EXECUTE FUNCTION bunce.ignore_replicated();
ALTER TABLE bunce.deliveries ENABLE REPLICA TRIGGER ignore_replicated;

-- Metrics, in Prometheus' terms: one row per sample. The worker's counters come from shared
-- memory (bunce.metrics_samples()); dead letters and the oldest pending event from the tables,
-- each by one index probe or a count of the (small) dead letter table.
CREATE FUNCTION bunce.metrics_samples(OUT name text, OUT labels jsonb, OUT value double precision,
                                      OUT type text, OUT help text)
    RETURNS SETOF record
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'bunce_metrics_samples';
CREATE VIEW bunce.metrics AS
SELECT m.name, m.labels, m.value, m.type, m.help FROM bunce.metrics_samples() m
UNION ALL
SELECT 'bunce_dead_letters', jsonb_build_object('database', current_database()),
       (SELECT count(*) FROM bunce.dead_letters)::double precision, 'gauge', 'rows in bunce.dead_letters'
UNION ALL
SELECT 'bunce_oldest_pending_seconds', jsonb_build_object('database', current_database()),
       coalesce(extract(epoch FROM now() - (SELECT o.enqueued_at FROM bunce.outbox o ORDER BY o.id LIMIT 1)), 0)
           ::double precision,
       'gauge', 'age of the oldest event in the outbox (0 when it is empty)';
COMMENT ON VIEW bunce.metrics IS 'one row per Prometheus sample: name, labels, value, type, help';
REVOKE ALL ON FUNCTION bunce.metrics_samples() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bunce.metrics_samples() TO bunce_admin;
REVOKE ALL ON bunce.metrics FROM PUBLIC;
GRANT SELECT ON bunce.metrics TO bunce_admin;

-- The event catalog: Bunce's event definitions (GET /v1/events), synced by the worker. A
-- cache of what Bunce says, not data of this database: pg_dump leaves it out, and a restored
-- database syncs it again.
CREATE TABLE bunce.events (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    description text NOT NULL DEFAULT '',
    parameters jsonb NOT NULL DEFAULT '[]',
    synced_at timestamptz NOT NULL
);
CREATE INDEX events_name_idx ON bunce.events (name);
COMMENT ON TABLE bunce.events IS 'Bunce''s event definitions (GET /v1/events), synced by the worker';
REVOKE ALL ON bunce.events FROM PUBLIC;
GRANT SELECT ON bunce.events TO bunce_admin;

CREATE FUNCTION bunce.refresh_events() RETURNS integer
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'bunce_refresh_events';
COMMENT ON FUNCTION bunce.refresh_events() IS
    'asks the worker to sync bunce.events from Bunce now, waits for it, returns the number of events';
REVOKE ALL ON FUNCTION bunce.refresh_events() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bunce.refresh_events() TO bunce_admin;

CREATE FUNCTION bunce.event_id(name text) RETURNS uuid
    LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'bunce_event_id';
COMMENT ON FUNCTION bunce.event_id(text) IS 'the id of the event of this name in bunce.events';
REVOKE ALL ON FUNCTION bunce.event_id(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bunce.event_id(text) TO bunce_admin;
