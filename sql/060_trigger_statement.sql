-- The generic trigger per statement, over a transition table: bulk loads enqueue one event
-- per row.
CREATE EXTENSION bunce;

CREATE TABLE imports (id int, email text, amount numeric, at timestamptz);
CREATE TRIGGER imports_new AFTER INSERT ON imports
    REFERENCING NEW TABLE AS n
    FOR EACH STATEMENT EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
                                                      '{"email": "email", "amount": "amount", "at": "at", "row": "id"}');

-- INSERT ... SELECT of many rows
INSERT INTO imports
SELECT i, format('user%s@example.com', i), i * 1.5, timestamptz '2024-05-01 10:00:00+02' + i * interval '1 hour'
FROM generate_series(1, 1000) i;
SELECT count(*) AS queued, count(DISTINCT payload ->> 'row') AS distinct_rows,
       min((payload ->> 'row')::int) AS first, max((payload ->> 'row')::int) AS last
FROM bunce.outbox;
SELECT payload FROM bunce.outbox ORDER BY id LIMIT 3;
SELECT payload FROM bunce.outbox WHERE payload ->> 'row' = '1000';
-- a statement that touches no row enqueues nothing
INSERT INTO imports SELECT * FROM imports WHERE false;
SELECT count(*) AS queued FROM bunce.outbox;
TRUNCATE bunce.outbox;

-- COPY FROM STDIN
COPY imports (id, email, amount, at) FROM STDIN;
2001	copy1@example.com	10.5	2024-05-01 10:00:00+02
2002	copy2@example.com	\N	2024-12-31 23:30:00-01
2003	copy3@example.com	0	\N
\.
SELECT payload FROM bunce.outbox ORDER BY id;
-- one bad row fails the whole COPY: nothing of it stays, no event either
COPY imports (id, email) FROM STDIN;
2004	fine@example.com
2005	not-an-email
\.
SELECT count(*) AS imported FROM imports WHERE id >= 2004;
SELECT count(*) AS queued FROM bunce.outbox;
TRUNCATE bunce.outbox;

-- REFERENCING OLD TABLE for DELETE; UPDATE sees the new rows.
CREATE TRIGGER imports_gone AFTER DELETE ON imports
    REFERENCING OLD TABLE AS o
    FOR EACH STATEMENT EXECUTE FUNCTION bunce_trigger('22222222-2222-4222-8222-222222222222',
                                                      '{"email": "email", "deleted": "id"}');
CREATE TRIGGER imports_changed AFTER UPDATE ON imports
    REFERENCING OLD TABLE AS o NEW TABLE AS n
    FOR EACH STATEMENT EXECUTE FUNCTION bunce_trigger('33333333-3333-4333-8333-333333333333',
                                                      '{"email": "email", "amount": "amount"}');
DELETE FROM imports WHERE id > 2001;
UPDATE imports SET amount = 99, email = 'changed@example.com' WHERE id = 2001;
SELECT event_id, payload FROM bunce.outbox ORDER BY id;
TRUNCATE bunce.outbox;
DROP TRIGGER imports_changed ON imports;

-- A statement-level trigger without a transition table cannot see rows.
-- Refused when created.
CREATE TRIGGER imports_no_table AFTER INSERT ON imports
    FOR EACH STATEMENT EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088');
CREATE TRIGGER imports_no_old AFTER DELETE ON imports
    FOR EACH STATEMENT EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088');
CREATE TRIGGER imports_old_only AFTER INSERT OR DELETE ON imports REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088');
SELECT count(*) AS queued FROM bunce.outbox;
TRUNCATE imports;

-- A bad row in the middle of a bulk insert fails the statement, naming the trigger.
INSERT INTO imports VALUES (1, 'a@example.com', 1, NULL), (2, NULL, 2, NULL), (3, 'c@example.com', 3, NULL);
SELECT count(*) AS queued, (SELECT count(*) FROM imports) AS imported FROM bunce.outbox;

-- Whole-row statement trigger (no mapping), rolled back with its transaction.
DROP TRIGGER imports_new ON imports;
CREATE TRIGGER imports_all AFTER INSERT ON imports REFERENCING NEW TABLE AS n
    FOR EACH STATEMENT EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088');
BEGIN;
INSERT INTO imports VALUES (1, 'a@example.com', NULL, '2024-05-01 10:00:00.5+02'), (2, 'b@example.com', 2, NULL);
SELECT payload FROM bunce.outbox ORDER BY id;
ROLLBACK;
SELECT count(*) AS queued FROM bunce.outbox;

DROP TABLE imports;
DROP EXTENSION bunce;
