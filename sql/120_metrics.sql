-- bunce.metrics: one row per Prometheus sample (see README, Monitoring). Only what does not
-- depend on the worker's timing is shown.
CREATE EXTENSION bunce;

SELECT array_agg(attname::text || ' ' || format_type(atttypid, atttypmod) ORDER BY attnum) AS columns
FROM pg_attribute WHERE attrelid = 'bunce.metrics'::regclass AND attnum > 0;

-- The series, each with its type and help.
SELECT name, type, count(*) AS samples, bool_and(help <> '') AS has_help
FROM bunce.metrics GROUP BY name, type ORDER BY name;

-- Every sample names its database; the other labels are the series' own.
SELECT bool_and(labels ->> 'database' = current_database()) AS database_labelled FROM bunce.metrics;
SELECT DISTINCT name, array(SELECT jsonb_object_keys(labels - 'database') ORDER BY 1) AS labels
FROM bunce.metrics WHERE labels - 'database' <> '{}' ORDER BY name;
SELECT string_agg(labels ->> 'class', ', ' ORDER BY labels ->> 'class') AS classes
FROM bunce.metrics WHERE name = 'bunce_answers_total';

-- The latency histogram: cumulative buckets, the last (+Inf) equal to _count.
SELECT string_agg(labels ->> 'le', ', ') AS bounds FROM bunce.metrics
WHERE name = 'bunce_delivery_latency_seconds_bucket';
SELECT (SELECT value FROM bunce.metrics WHERE name = 'bunce_delivery_latency_seconds_bucket'
                                          AND labels ->> 'le' = '+Inf')
     = (SELECT value FROM bunce.metrics WHERE name = 'bunce_delivery_latency_seconds_count') AS inf_is_count;

-- The worker runs, paused by bunce.enabled = off (or still waiting for the extension it has
-- not looked for yet). The launcher may have started it a moment ago: wait for that.
DO $$
BEGIN
    FOR i IN 1..300 LOOP
        EXIT WHEN (SELECT sum(value) FROM bunce.metrics WHERE name IN ('bunce_worker_up', 'bunce_paused')) = 2;
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;
SELECT value AS worker_up FROM bunce.metrics WHERE name = 'bunce_worker_up';
SELECT value AS paused, labels ->> 'reason' IN ('disabled', 'waiting_extension') AS reason_given
FROM bunce.metrics WHERE name = 'bunce_paused';
SELECT value FROM bunce.metrics WHERE name = 'bunce_rate_limit';

-- Table gauges: dead letters and the oldest pending event.
INSERT INTO bunce.dead_letters (id, event_id, payload, idempotency_key, reason, message, attempts, enqueued_at)
VALUES (1, '9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "a@example.com"}', gen_random_uuid(), 'invalid',
        'written by hand', 0, now());
SELECT value FROM bunce.metrics WHERE name = 'bunce_dead_letters';
SELECT value FROM bunce.metrics WHERE name = 'bunce_oldest_pending_seconds';
INSERT INTO bunce.outbox (event_id, payload, enqueued_at)
VALUES ('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "a@example.com"}', now() - interval '1 hour');
SELECT value BETWEEN 3600 AND 3700 AS hour_old FROM bunce.metrics WHERE name = 'bunce_oldest_pending_seconds';

-- bunce_admin reads it; others do not.
CREATE ROLE metrics_reader;
SET ROLE metrics_reader;
SELECT count(*) FROM bunce.metrics;
SELECT count(*) FROM bunce.metrics_samples();
RESET ROLE;
GRANT bunce_admin TO metrics_reader;
SET ROLE metrics_reader;
SELECT count(*) > 0 AS readable FROM bunce.metrics;
RESET ROLE;
DROP ROLE metrics_reader;

DROP EXTENSION bunce;
