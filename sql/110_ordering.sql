-- Per-customer ordering: the key of each event, ids in causal order, and how the claim places
-- new events (the worker's answers and its frontier are tested in test/t/100_ordering.pl).
CREATE EXTENSION bunce;

\ir sql/include/try_sql.sql
\set ev '''9bb6215c-e2b1-4e51-abff-3a96ca185088'''

-- The key bunce_trigger writes is bunce.ordering_key(payload): customer.customer_id, else
-- customer.email, else email. Same group = same key.
SELECT bunce_trigger(:ev, p) > 0 AS enqueued FROM (VALUES
    (1, '{"n": 1, "customer": {"customer_id": "42", "email": "a@example.com"}}'::jsonb),
    (2, '{"n": 2, "customer": {"customer_id": 42}}'),  -- an integer id is sent as "42": the same
    (3, '{"n": 3, "customer": {"email": "a@example.com"}, "email": "b@example.com"}'),
    (4, '{"n": 4, "email": "a@example.com"}'),         -- the same address as 3: the same customer
    (5, '{"n": 5, "email": "b@example.com"}'),
    (6, '{"n": 6, "customer": {"customer_id": "a@example.com"}}'),  -- an id is not an address
    (7, '{"n": 7, "customer": {"customer_id": "42"}, "email": "x@example.com"}')) v(i, p)
ORDER BY i;
CREATE TABLE people (id int, email text);
CREATE TRIGGER people_ins AFTER INSERT ON people FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('22222222-2222-4222-8222-222222222222', '{"email": "email", "n": "id"}');
INSERT INTO people VALUES (8, 'b@example.com');
SELECT payload ->> 'n' AS n, ordering_key = bunce.ordering_key(payload) AS same_as_sql,
       dense_rank() OVER (ORDER BY first_of_key) AS key_group
FROM (SELECT payload, ordering_key, id, min(id) OVER (PARTITION BY ordering_key) AS first_of_key
      FROM bunce.outbox) o
ORDER BY id;

-- Ids: consecutive within a transaction (a block per transaction); a later transaction
-- starts a new block, above every id handed out before it began.
SELECT id - lag(id) OVER (ORDER BY id) AS step FROM bunce.outbox ORDER BY id;
-- rows written by SQL take their ids the same way (the column default)
BEGIN;
INSERT INTO bunce.outbox (event_id, payload) VALUES (:ev, '{"email": "h1@example.com"}'), (:ev, '{"email": "h2@example.com"}');
SELECT bunce_trigger(:ev, '{"email": "h3@example.com"}') - max(id) AS after_them FROM bunce.outbox;
COMMIT;
-- a cache on the sequence would hand out ids out of order, another increment ids of blocks
-- others hold: refused
ALTER SEQUENCE bunce.event_id_seq CACHE 64;
SELECT * FROM try_sql($$SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "a@example.com"}')$$);
ALTER SEQUENCE bunce.event_id_seq CACHE 1 INCREMENT BY 1;
SELECT * FROM try_sql($$SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "a@example.com"}')$$);
ALTER SEQUENCE bunce.event_id_seq INCREMENT BY 64;
TRUNCATE bunce.outbox;

-- The worker, when it starts, releases every claim made before it (a crashed worker's); the
-- launcher starts it within 5 s of the database's creation (and a second after it stopped):
-- the claims below come after.
DO $$
BEGIN
    FOR i IN 1..6000 LOOP
        EXIT WHEN (SELECT pid IS NOT NULL FROM bunce.status);
        PERFORM pg_sleep(0.01);
    END LOOP;
    IF (SELECT pid IS NULL FROM bunce.status) THEN
        RAISE EXCEPTION 'no worker ran for this database within 60 s';
    END IF;
END
$$;
-- The claim: the first new event of each customer is sent; later ones are parked behind it
-- (no payload returned), new or not, until the worker gives them their turn.
SELECT bunce_trigger(:ev, jsonb_build_object('email', e, 'n', n)) > 0 AS enqueued
FROM (VALUES (1, 'a@example.com'), (2, 'b@example.com'), (3, 'a@example.com'), (4, 'c@example.com'),
             (5, 'a@example.com')) v(n, e) ORDER BY n;
SELECT o.payload ->> 'n' AS n, c.parked, c.payload IS NOT NULL AS sent
FROM bunce.claim(10) c JOIN bunce.outbox o USING (id) ORDER BY id;
SELECT payload ->> 'n' AS n, scheduled, sending_since IS NOT NULL AS claimed, attempts,
       next_attempt_at = 'infinity' AS waiting_turn
FROM bunce.outbox ORDER BY id;
-- nothing more to claim: a's turn has not come
SELECT count(*) AS claimed FROM bunce.claim(10) WHERE id IS NOT NULL;
-- a new event of a busy customer is parked at once; one of a free customer goes
SELECT bunce_trigger(:ev, '{"email": "a@example.com", "n": 6}') > 0 AS enqueued;
SELECT bunce_trigger(:ev, '{"email": "d@example.com", "n": 7}') > 0 AS enqueued;
SELECT o.payload ->> 'n' AS n, c.parked FROM bunce.claim(10) c JOIN bunce.outbox o USING (id) ORDER BY id;

-- Slots: heads are placed only while max_events allows; rows before the first head that does
-- not fit are placed; the last row says up to which id every new row was placed (NULL: all).
SELECT bunce_trigger(:ev, jsonb_build_object('email', e, 'n', n)) > 0 AS enqueued
FROM (VALUES (8, 'a@example.com'), (9, 'e@example.com'), (10, 'f@example.com')) v(n, e) ORDER BY n;
SELECT id AS id10 FROM bunce.outbox WHERE payload ->> 'n' = '10' \gset
SELECT o.payload ->> 'n' AS n, c.parked, c.covered = :id10 - 1 AS covered_up_to_10
FROM bunce.claim(1) c LEFT JOIN bunce.outbox o USING (id) ORDER BY id;
SELECT o.payload ->> 'n' AS n, c.parked, c.covered FROM bunce.claim(5) c LEFT JOIN bunce.outbox o USING (id) ORDER BY id;

-- A row that someone else holds locked is skipped, with the rest of its customer's rows,
-- earlier ones too (whoever holds it may be sending it); the claim does not wait for it, and
-- says it stopped before the first row it skipped.
SELECT bunce_trigger(:ev, jsonb_build_object('email', e, 'n', n)) > 0 AS enqueued
FROM (VALUES (13, 'h@example.com'), (14, 'h@example.com'), (15, 'i@example.com'), (17, 'k@example.com'),
             (18, 'k@example.com')) v(n, e) ORDER BY n;
SELECT id AS id13 FROM bunce.outbox WHERE payload ->> 'n' = '13' \gset
SELECT id AS id18 FROM bunce.outbox WHERE payload ->> 'n' = '18' \gset
CREATE EXTENSION IF NOT EXISTS dblink;
SELECT dblink_connect('locker', 'dbname=' || current_database());
SELECT dblink_exec('locker', 'BEGIN');
SELECT dblink_exec('locker', 'UPDATE bunce.outbox SET last_error = last_error WHERE id IN (' || :id13 || ', ' || :id18 || ')');
SELECT o.payload ->> 'n' AS n, c.parked, c.covered = :id13 - 1 AS stopped_before_13
FROM bunce.claim(10) c LEFT JOIN bunce.outbox o USING (id) ORDER BY id;
SELECT dblink_exec('locker', 'COMMIT');
SELECT dblink_disconnect('locker');
SELECT o.payload ->> 'n' AS n, c.parked FROM bunce.claim(10) c JOIN bunce.outbox o USING (id) ORDER BY id;

-- after_id: new rows are looked for above it only
SELECT bunce_trigger(:ev, '{"email": "g@example.com", "n": 11}') AS id11 \gset
SELECT count(*) AS claimed FROM bunce.claim(10, :id11) WHERE id IS NOT NULL;
SELECT o.payload ->> 'n' AS n FROM bunce.claim(10, :id11 - 1) c JOIN bunce.outbox o USING (id);

-- open transactions (open_xids, open_firsts: they held ids when the worker looked): rows
-- below after_id are looked for again from the first id of each one that has ended
SELECT bunce_trigger(:ev, '{"email": "j@example.com", "n": 16}') AS id16 \gset
SELECT pg_current_xact_id() AS ended \gset
SELECT dblink_connect('open', 'dbname=' || current_database());
SELECT dblink_exec('open', 'BEGIN');
SELECT x AS running FROM dblink('open', 'SELECT pg_current_xact_id()::text') AS t(x text) \gset
SELECT count(*) AS claimed_while_running
FROM bunce.claim(10, :id16, true, ARRAY[:'running']::xid8[], ARRAY[:id16]) WHERE id IS NOT NULL;
SELECT o.payload ->> 'n' AS n
FROM bunce.claim(10, :id16, true, ARRAY[:'running', :'ended']::xid8[], ARRAY[:id16 + 1, :id16]) c
JOIN bunce.outbox o USING (id);
SELECT dblink_exec('open', 'COMMIT');
SELECT dblink_disconnect('open');

-- ordered = false (bunce.ordering = none): every new event goes at once
SELECT bunce_trigger(:ev, '{"email": "a@example.com", "n": 12}') > 0 AS enqueued;
SELECT o.payload ->> 'n' AS n, c.parked FROM bunce.claim(10, 0, false) c JOIN bunce.outbox o USING (id);

-- max_events out of range
SELECT * FROM try_sql('SELECT * FROM bunce.claim(-1)');
SELECT * FROM try_sql('SELECT * FROM bunce.claim(2147483647)');

-- Only the worker claims.
CREATE ROLE ordering_admin IN ROLE bunce_admin;
SET ROLE ordering_admin;
SELECT * FROM try_sql('SELECT * FROM bunce.claim(10)');
SELECT * FROM try_sql('SELECT bunce.next_event_id()');
SELECT bunce.ordering_key('{"email": "a@example.com"}') = bunce.ordering_key('{"customer": {"email": "a@example.com"}}') AS same_key;
RESET ROLE;
DROP ROLE ordering_admin;

DROP TABLE people;
DROP EXTENSION dblink;
DROP EXTENSION bunce;
