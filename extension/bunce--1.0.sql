-- bunce 1.0: the outbox, dead letters, delivery log, status and management functions.
\echo Use "CREATE EXTENSION bunce" to load this file. \quit

CREATE SCHEMA bunce;
COMMENT ON SCHEMA bunce IS 'bunce internals: outbox, dead letters, delivery log, status';

-- One id sequence for the whole life of an event: it keeps its id (and its idempotency key)
-- when it moves to the dead letters and back.
CREATE SEQUENCE bunce.event_id_seq;

-- Pending events. An ordinary logged table written in the caller's transaction: rolled back
-- means never sent; committed survives a crash and is replicated. The worker claims due rows
-- (sending_since), sends them after its claim committed, and deletes them after a 2xx.
-- Column order is relied on by the C enqueue path.
CREATE TABLE bunce.outbox (
    id                 bigint PRIMARY KEY DEFAULT nextval('bunce.event_id_seq'),
    event_id           uuid NOT NULL,
    payload            jsonb NOT NULL,
    idempotency_key    uuid NOT NULL DEFAULT gen_random_uuid(),
    enqueued_at        timestamptz NOT NULL DEFAULT now(),
    next_attempt_at    timestamptz NOT NULL DEFAULT now(),
    attempts           integer NOT NULL DEFAULT 0,
    sending_since      timestamptz,
    first_attempt_at   timestamptz,
    last_status        integer,
    last_error         text,
    possible_duplicate boolean NOT NULL DEFAULT false
) WITH (
    -- a queue: every row is deleted soon after it is written, so vacuum it often and cheaply
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 100000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0,
    fillfactor = 90
);
CREATE INDEX outbox_due_idx ON bunce.outbox (next_attempt_at, id);
COMMENT ON TABLE bunce.outbox IS 'events committed and not yet delivered';

-- What Bunce refused (400/404/413/422, success false), what ran out of attempts, and what
-- bunce_trigger refused while bunce.on_invalid = dead_letter. Never retried automatically.
CREATE TABLE bunce.dead_letters (
    id               bigint PRIMARY KEY,
    event_id         uuid,
    payload          jsonb,
    idempotency_key  uuid NOT NULL,
    reason           text NOT NULL CHECK (reason IN ('rejected', 'attempts_exhausted', 'invalid')),
    http_status      integer,
    message          text NOT NULL,
    attempts         integer NOT NULL,
    enqueued_at      timestamptz NOT NULL,
    first_attempt_at timestamptz,
    last_attempt_at  timestamptz,
    dead_since       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE bunce.dead_letters IS 'events that will not be delivered without bunce.retry_dead_letters()';

-- Which event went out when (kept bunce.delivery_log_retention; pruned by the worker).
CREATE TABLE bunce.deliveries (
    id              bigint PRIMARY KEY,
    event_id        uuid NOT NULL,
    idempotency_key uuid NOT NULL,
    http_status     integer NOT NULL,
    attempts        integer NOT NULL,
    enqueued_at     timestamptz NOT NULL,
    delivered_at    timestamptz NOT NULL DEFAULT now()
) WITH (autovacuum_vacuum_scale_factor = 0.05);
CREATE INDEX deliveries_delivered_at_idx ON bunce.deliveries (delivered_at);
CREATE INDEX deliveries_event_id_idx ON bunce.deliveries (event_id);
COMMENT ON TABLE bunce.deliveries IS 'events delivered to Bunce, kept bunce.delivery_log_retention';

-- pg_dump keeps the events a database holds (the extension's own objects are recreated by
-- CREATE EXTENSION on restore).
SELECT pg_catalog.pg_extension_config_dump('bunce.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('bunce.dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('bunce.deliveries', '');
SELECT pg_catalog.pg_extension_config_dump('bunce.event_id_seq', '');

-- Enqueueing: in the schema given to CREATE EXTENSION, so that applications call it
-- unqualified. Not STRICT: a NULL argument is an error, never a silent no-op.
CREATE FUNCTION @extschema@.bunce_trigger(event_id uuid, payload jsonb) RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'bunce_trigger_enqueue';
COMMENT ON FUNCTION @extschema@.bunce_trigger(uuid, jsonb) IS
    'validate, normalise and enqueue a Bunce event in the current transaction; returns its id';

CREATE FUNCTION @extschema@.bunce_trigger() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'bunce_trigger_row';
COMMENT ON FUNCTION @extschema@.bunce_trigger() IS
    'AFTER trigger: bunce_trigger(event_id [, mapping]) enqueues an event per affected row';

-- Worker state from shared memory (nothing of it is secret: never the key).
CREATE FUNCTION bunce.worker_state(
    OUT state text, OUT pid integer, OUT paused_reason text, OUT paused_until timestamptz,
    OUT queued bigint, OUT in_flight integer, OUT waiting_retry bigint,
    OUT delivered bigint, OUT failed bigint, OUT possibly_duplicated bigint,
    OUT delivered_last_hour bigint, OUT failed_last_hour bigint,
    OUT requests_last_minute integer, OUT last_success_at timestamptz,
    OUT last_error_status integer, OUT last_error text, OUT last_error_at timestamptz,
    OUT started_at timestamptz)
    RETURNS record LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'bunce_worker_state';

-- Counts events that SQL code moved into the outbox, and wakes the worker when the
-- transaction commits, as bunce_trigger does.
CREATE FUNCTION bunce.notify_enqueued(count bigint) RETURNS void
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'bunce_notify_enqueued';

CREATE VIEW bunce.status AS
SELECT w.state,
       w.pid,
       w.paused_reason,
       w.paused_until,
       w.queued,
       greatest(w.queued - w.waiting_retry - w.in_flight, 0) AS due_now,
       w.waiting_retry,
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

-- Puts dead letters (all, or the given ids) back into the outbox, due now, with their
-- original id and idempotency key. Returns how many.
CREATE FUNCTION bunce.retry_dead_letters(ids bigint[] DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    moved bigint;
BEGIN
    WITH gone AS (
        DELETE FROM bunce.dead_letters d
        WHERE (ids IS NULL OR d.id = ANY (ids))
          AND d.reason <> 'invalid'  -- refused by bunce_trigger: would be refused again
        RETURNING d.*)
    INSERT INTO bunce.outbox (id, event_id, payload, idempotency_key, enqueued_at)
    SELECT g.id, g.event_id, g.payload, g.idempotency_key, g.enqueued_at FROM gone g;
    GET DIAGNOSTICS moved = ROW_COUNT;
    PERFORM bunce.notify_enqueued(moved);
    RETURN moved;
END
$$;
COMMENT ON FUNCTION bunce.retry_dead_letters(bigint[]) IS
    'move dead letters (NULL = all) back to the outbox for delivery; returns how many';

-- Deletes dead letters: all, the given ids, and/or those dead longer than older_than.
CREATE FUNCTION bunce.discard_dead_letters(ids bigint[] DEFAULT NULL,
                                           older_than interval DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    gone bigint;
BEGIN
    DELETE FROM bunce.dead_letters d
    WHERE (ids IS NULL OR d.id = ANY (ids))
      AND (older_than IS NULL OR d.dead_since < now() - older_than);
    GET DIAGNOSTICS gone = ROW_COUNT;
    RETURN gone;
END
$$;
COMMENT ON FUNCTION bunce.discard_dead_letters(bigint[], interval) IS
    'delete dead letters (NULL ids = all), optionally only those older than older_than';

-- Privileges: customer data, so PUBLIC gets nothing. bunce_admin (a NOLOGIN role, created
-- if missing) may read everything and manage dead letters; applications get EXECUTE on
-- bunce_trigger(uuid, jsonb) explicitly (see README).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'bunce_admin') THEN
        CREATE ROLE bunce_admin NOLOGIN;
    END IF;
END
$$;
REVOKE ALL ON SCHEMA bunce FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA bunce FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA bunce FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.bunce_trigger(uuid, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.bunce_trigger() FROM PUBLIC;
GRANT USAGE ON SCHEMA bunce TO bunce_admin;
GRANT SELECT ON ALL TABLES IN SCHEMA bunce TO bunce_admin;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA bunce TO bunce_admin;
GRANT EXECUTE ON FUNCTION @extschema@.bunce_trigger(uuid, jsonb) TO bunce_admin;
GRANT EXECUTE ON FUNCTION @extschema@.bunce_trigger() TO bunce_admin;
