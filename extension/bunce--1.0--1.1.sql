-- bunce 1.0 -> 1.1: bunce.purge_deliveries(), an index for discarding old dead letters, and
-- event ids taken 64 at a time.
\echo Use "ALTER EXTENSION bunce UPDATE TO '1.1'" to load this file. \quit

CREATE INDEX dead_letters_dead_since_idx ON bunce.dead_letters (dead_since);

-- Each session takes event ids 64 at a time: one sequence access (a buffer lock, and WAL
-- every 32 values) per 64 events instead of per event. Ids stay unique and increase within a
-- session; across sessions they are not in commit order (they never were), and a session
-- that ends leaves a gap.
ALTER SEQUENCE bunce.event_id_seq CACHE 64;

-- Deletes delivery log rows older than older_than (all when NULL) at once, for when the
-- worker's gradual pruning (bunce.delivery_log_retention) is not enough. Returns how many.
CREATE FUNCTION bunce.purge_deliveries(older_than interval DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    gone bigint;
BEGIN
    DELETE FROM bunce.deliveries d
    WHERE older_than IS NULL OR d.delivered_at < now() - older_than;
    GET DIAGNOSTICS gone = ROW_COUNT;
    RETURN gone;
END
$$;
COMMENT ON FUNCTION bunce.purge_deliveries(interval) IS
    'delete delivery log rows older than older_than (NULL = all); returns how many';
REVOKE ALL ON FUNCTION bunce.purge_deliveries(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bunce.purge_deliveries(interval) TO bunce_admin;
