-- bunce.on_invalid = dead_letter: a refused event is kept in bunce.dead_letters with the
-- reason, a WARNING says so, and the caller's write goes through.
CREATE EXTENSION bunce;

SHOW bunce.on_invalid;
SELECT setting, enumvals, context FROM pg_settings WHERE name = 'bunce.on_invalid';
SET bunce.on_invalid = 'sometimes';

CREATE TABLE orders (id int PRIMARY KEY, email text, total numeric);

SET bunce.on_invalid = dead_letter;
BEGIN;
INSERT INTO orders VALUES (1, 'nope', 10);
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "nope", "total": 10}') > 0 AS returned_an_id;
SELECT bunce_trigger(NULL, '{"email": "ada@example.com"}') > 0 AS returned_an_id;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', NULL) > 0 AS returned_an_id;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '[1, 2]') > 0 AS returned_an_id;
-- a good one still goes to the outbox
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}') > 0 AS returned_an_id;
COMMIT;
SELECT count(*) AS orders FROM orders;
SELECT payload FROM bunce.outbox ORDER BY id;
SELECT event_id, payload, reason, http_status, message, attempts,
       enqueued_at IS NOT NULL AS has_enqueued_at, dead_since IS NOT NULL AS has_dead_since,
       first_attempt_at, last_attempt_at
FROM bunce.dead_letters ORDER BY id;
-- the id returned is the dead letter's id, from the same sequence as the outbox
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"customer": {}}') AS dead_id \gset
SELECT reason, message FROM bunce.dead_letters WHERE id = :dead_id;
SELECT count(*) AS ids_shared FROM bunce.outbox o JOIN bunce.dead_letters d USING (id);

-- A dead letter is written in the caller's transaction: rolled back with it.
BEGIN;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "rolled back"}') > 0 AS returned_an_id;
ROLLBACK;
SELECT count(*) AS dead FROM bunce.dead_letters WHERE payload ->> 'email' = 'rolled back';

-- With the trigger: the row is written, its event dead-lettered with the trigger's name.
CREATE TRIGGER orders_ins AFTER INSERT ON orders FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('22222222-2222-4222-8222-222222222222', '{"email": "email", "total": "total"}');
INSERT INTO orders VALUES (2, 'ada@example.com', 20), (3, 'bad@', 30), (4, NULL, 40);
SELECT id, email FROM orders ORDER BY id;
SELECT payload FROM bunce.outbox WHERE event_id = '22222222-2222-4222-8222-222222222222' ORDER BY id;
SELECT event_id, payload, reason, message FROM bunce.dead_letters
WHERE event_id = '22222222-2222-4222-8222-222222222222' ORDER BY id;
-- mapping errors are not about an event: they stay errors (at CREATE TRIGGER)
CREATE TRIGGER orders_bad AFTER INSERT ON orders FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('22222222-2222-4222-8222-222222222222', '{"email": "no_such_column"}');

-- Per session: RESET goes back to error.
RESET bunce.on_invalid;
SHOW bunce.on_invalid;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "nope"}');
INSERT INTO orders VALUES (6, 'bad@', 60);
-- SET LOCAL lasts for the transaction
BEGIN;
SET LOCAL bunce.on_invalid = dead_letter;
INSERT INTO orders VALUES (7, 'bad@', 70);
COMMIT;
SHOW bunce.on_invalid;
INSERT INTO orders VALUES (8, 'bad@', 80);
-- per function, as a function setting
CREATE FUNCTION lenient_enqueue(p jsonb) RETURNS bigint LANGUAGE sql
    SET bunce.on_invalid = dead_letter
    AS $$ SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', p) $$;
SELECT lenient_enqueue('{"email": "lenient"}') > 0 AS returned_an_id;
SHOW bunce.on_invalid;

SELECT (SELECT count(*) FROM orders) AS orders, (SELECT count(*) FROM bunce.outbox) AS queued,
       (SELECT count(*) FROM bunce.dead_letters) AS dead,
       (SELECT count(*) FROM bunce.dead_letters WHERE reason = 'invalid') AS invalid;

DROP FUNCTION lenient_enqueue(jsonb);
DROP TABLE orders;
DROP EXTENSION bunce;
