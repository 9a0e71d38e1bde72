-- bunce 1.2 -> 1.3: the worker's claim is a function of the extension, so that the isolation
-- specs test the claim the worker runs, not a copy of it.
\echo Use "ALTER EXTENSION bunce UPDATE TO '1.3'" to load this file. \quit

-- Claims up to max_events due events for delivery: marks them as being sent (sending_since)
-- and counts the attempt. FOR UPDATE SKIP LOCKED: concurrent claims get disjoint rows, and a
-- claim never waits for an enqueue. Called by the worker, in a transaction that commits
-- before any request is sent. PL/pgSQL so that the plan is kept for the session.
CREATE FUNCTION bunce.claim(max_events integer)
RETURNS TABLE (id bigint, attempts integer, event_id uuid, payload jsonb, idempotency_key uuid)
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    UPDATE bunce.outbox o
    SET sending_since = statement_timestamp(), attempts = o.attempts + 1,
        first_attempt_at = coalesce(o.first_attempt_at, statement_timestamp())
    FROM (SELECT c.id FROM bunce.outbox c
          WHERE c.next_attempt_at <= statement_timestamp() AND c.sending_since IS NULL
          ORDER BY c.next_attempt_at, c.id
          LIMIT max_events
          FOR UPDATE SKIP LOCKED) due
    WHERE o.id = due.id
    RETURNING o.id, o.attempts, o.event_id, o.payload, o.idempotency_key;
END
$$;
-- Only the worker (a superuser) claims: a claim by anyone else would hold events back and
-- make them possible duplicates.
REVOKE ALL ON FUNCTION bunce.claim(integer) FROM PUBLIC, bunce_admin;
