-- bunce_trigger enqueues in the caller's transaction: the caller's transaction decides.
CREATE EXTENSION bunce;
CREATE TABLE orders (id int PRIMARY KEY, email text, total numeric);

-- Rolled back: nothing in the outbox.
BEGIN;
INSERT INTO orders VALUES (1, 'ada@example.com', 10);
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com", "n": 1}') > 0 AS enqueued;
SELECT count(*) AS visible_inside FROM bunce.outbox;
ROLLBACK;
SELECT count(*) AS queued FROM bunce.outbox;

-- A refused event aborts the whole transaction, the business write with it.
BEGIN;
INSERT INTO orders VALUES (2, 'ada@example.com', 20);
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com", "n": 2}') > 0 AS enqueued;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "not an email", "n": 3}');
SELECT 1;  -- the transaction is aborted
COMMIT;    -- so this rolls back
SELECT (SELECT count(*) FROM orders) AS orders, (SELECT count(*) FROM bunce.outbox) AS queued;

-- The same from a function: one statement, all or nothing.
CREATE FUNCTION place_order(order_id int, customer_email text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO orders VALUES (order_id, customer_email, 30);
    PERFORM bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
                          jsonb_build_object('email', customer_email, 'order', order_id));
END
$$;
SELECT place_order(4, 'nope');
SELECT place_order(5, 'grace@example.org');
SELECT (SELECT count(*) FROM orders) AS orders, (SELECT count(*) FROM bunce.outbox) AS queued;

-- A savepoint rolled back removes just its events.
BEGIN;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com", "step": "before"}') > 0 AS enqueued;
SAVEPOINT s1;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com", "step": "in s1"}') > 0 AS enqueued;
SAVEPOINT s2;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com", "step": "in s2"}') > 0 AS enqueued;
ROLLBACK TO SAVEPOINT s1;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com", "step": "after rollback to s1"}') > 0 AS enqueued;
SAVEPOINT s3;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com", "step": "in s3, released"}') > 0 AS enqueued;
RELEASE SAVEPOINT s3;
-- a failed call inside a savepoint: roll back to it and go on
SAVEPOINT s4;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"step": "no recipient"}');
ROLLBACK TO SAVEPOINT s4;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com", "step": "last"}') > 0 AS enqueued;
COMMIT;
SELECT payload ->> 'step' AS step FROM bunce.outbox WHERE payload ? 'step' ORDER BY id;

-- The same with PL/pgSQL exception blocks (subtransactions).
DO $$
BEGIN
    PERFORM bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com", "block": "kept"}');
    BEGIN
        PERFORM bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com", "block": "undone"}');
        RAISE EXCEPTION 'give up';
    EXCEPTION WHEN raise_exception THEN
        NULL;
    END;
END
$$;
SELECT payload ->> 'block' AS block FROM bunce.outbox WHERE payload ? 'block' ORDER BY id;

-- The returned id is the outbox id, and ids increase.
BEGIN;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com", "mark": "a"}') AS a_id \gset
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com", "mark": "b"}') AS b_id \gset
SELECT payload ->> 'mark' AS mark FROM bunce.outbox WHERE id = :a_id;
SELECT payload ->> 'mark' AS mark FROM bunce.outbox WHERE id = :b_id;
SELECT :b_id > :a_id AS increasing, :a_id = (SELECT max(id) FROM bunce.outbox WHERE payload ->> 'mark' = 'a') AS same;
COMMIT;
-- Several calls in one statement: one row each, each id its own.
SELECT count(DISTINCT id) AS distinct_ids, count(*) AS calls
FROM (SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
                           jsonb_build_object('email', 'ada@example.com', 'i', i)) AS id
      FROM generate_series(1, 50) i) s;
SELECT count(*) AS rows_for_series FROM bunce.outbox WHERE payload ? 'i';

-- The rows are written with the caller's transaction id (an ordinary insert).
BEGIN;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com", "mark": "xmin"}') > 0 AS enqueued;
SELECT xmin::text = txid_current()::text AS same_transaction FROM bunce.outbox WHERE payload ->> 'mark' = 'xmin';
COMMIT;

-- Rows enqueued one by one by a single command (here a multi-row INSERT through the row
-- trigger and a SELECT over many calls) share one open outbox writer; DDL later in the same
-- transaction is not blocked by it, and the savepoint rollback in between keeps nothing.
CREATE TABLE bulk_orders (id int, email text);
CREATE TRIGGER bulk_placed AFTER INSERT ON bulk_orders FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "email", "bulk": "id"}');
BEGIN;
INSERT INTO bulk_orders SELECT i, 'ada@example.com' FROM generate_series(1, 20) i;
SAVEPOINT s;
INSERT INTO bulk_orders SELECT i, 'ada@example.com' FROM generate_series(21, 25) i;
ROLLBACK TO SAVEPOINT s;
INSERT INTO bulk_orders SELECT i, 'ada@example.com' FROM generate_series(26, 30) i;
SELECT count(*) AS enqueued, min((payload ->> 'bulk')::int), max((payload ->> 'bulk')::int)
FROM bunce.outbox WHERE payload ? 'bulk';
TRUNCATE bunce.outbox;
SELECT count(*) AS after_truncate FROM bunce.outbox;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}') > 0 AS enqueued;
COMMIT;
SELECT count(*) AS committed FROM bunce.outbox;
BEGIN;
INSERT INTO bulk_orders VALUES (31, 'ada@example.com');
DROP TABLE bulk_orders;
DROP EXTENSION bunce;
ROLLBACK;
DROP TABLE bulk_orders;

-- The outbox writer keeps what it built from one transaction to the next, and follows the
-- table: an index made since is maintained, a default set since is used (the rows from before
-- read the column's first default).
TRUNCATE bunce.outbox;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}') > 0 AS enqueued;
CREATE INDEX outbox_test_idx ON bunce.outbox (enqueued_at);
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}') > 0 AS enqueued;
BEGIN;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}') > 0 AS enqueued;
SELECT 1 / 0;
ROLLBACK;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}') > 0 AS enqueued;
SET enable_seqscan = off;
SELECT count(*) AS in_new_index FROM bunce.outbox WHERE enqueued_at > '2000-01-01';
RESET enable_seqscan;
DROP INDEX bunce.outbox_test_idx;
ALTER TABLE bunce.outbox ADD COLUMN note text DEFAULT 'before';
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}') > 0 AS enqueued;
ALTER TABLE bunce.outbox ALTER COLUMN note SET DEFAULT 'after';
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}') > 0 AS enqueued;
SELECT note, count(*) FROM bunce.outbox GROUP BY note ORDER BY note;
ALTER TABLE bunce.outbox DROP COLUMN note;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}') > 0 AS enqueued;
SELECT count(*) AS queued FROM bunce.outbox;

-- A default that calls a function is evaluated as it is now, and refused once it turns
-- volatile; a writer that cannot be built inside a subtransaction leaves nothing open.
CREATE FUNCTION outbox_tag() RETURNS text LANGUAGE sql STABLE AS $$SELECT 'A'::text$$;
ALTER TABLE bunce.outbox ADD COLUMN tag text DEFAULT outbox_tag();
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}') > 0 AS enqueued;
CREATE OR REPLACE FUNCTION outbox_tag() RETURNS text LANGUAGE sql STABLE AS $$SELECT 'B'::text$$;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}') > 0 AS enqueued;
SELECT tag, count(*) FROM bunce.outbox WHERE tag IS NOT NULL GROUP BY tag ORDER BY tag;
CREATE OR REPLACE FUNCTION outbox_tag() RETURNS text LANGUAGE sql VOLATILE AS $$SELECT 'C'::text$$;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}');
DO $$
BEGIN
  PERFORM bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}');
EXCEPTION WHEN object_not_in_prerequisite_state THEN
  RAISE NOTICE 'refused: %', SQLERRM;
END $$;
ALTER TABLE bunce.outbox DROP COLUMN tag;
DROP FUNCTION outbox_tag();
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}') > 0 AS enqueued;

-- A statement's row-trigger events are written together when it ends (a batch): the next
-- statement sees all of them, in the order of their ids, past the size of one batch.
CREATE TABLE parents (id int, email text);
CREATE TABLE children (id int, email text);
CREATE TRIGGER a_parent_placed AFTER INSERT ON parents FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "email", "parent": "id"}');
CREATE TRIGGER child_placed AFTER INSERT ON children FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "email", "child": "id"}');
TRUNCATE bunce.outbox;
BEGIN;
INSERT INTO parents SELECT i, 'ada@example.com' FROM generate_series(1, 2500) i;
SELECT count(*) AS seen, count(DISTINCT id) AS ids,
       bool_and(next_parent IS NULL OR next_parent > parent) AS ids_follow_rows
FROM (SELECT id, (payload ->> 'parent')::int AS parent,
             lead((payload ->> 'parent')::int) OVER (ORDER BY id) AS next_parent
      FROM bunce.outbox) s;
COPY parents FROM STDIN (FORMAT csv);
2501,grace@example.org
2502,grace@example.org
\.
SELECT count(*) AS after_copy FROM bunce.outbox WHERE payload ->> 'email' = 'grace@example.org';
COMMIT;
-- A trigger that writes to another table with a bunce trigger, inside an exception block,
-- between the parent's events: the block's events go with the block, the parents' stay.
CREATE FUNCTION add_children() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    child_event bigint;
BEGIN
    BEGIN
        INSERT INTO children VALUES (NEW.id * 10, NEW.email), (NEW.id * 10 + 1, NEW.email);
        -- bunce_trigger() writes at once: its row is there for the next statement
        child_event := bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
                                     jsonb_build_object('email', NEW.email, 'child', NEW.id * 10 + 2));
        IF NOT EXISTS (SELECT FROM bunce.outbox WHERE id = child_event) THEN
            RAISE EXCEPTION 'event % not visible', child_event;
        END IF;
        IF NEW.id % 2 = 0 THEN
            RAISE EXCEPTION 'no children for %', NEW.id;
        END IF;
    EXCEPTION WHEN raise_exception THEN
        IF SQLERRM LIKE 'no children%' THEN
            RETURN NULL;
        END IF;
        RAISE;
    END;
    RETURN NULL;
END
$$;
CREATE TRIGGER b_add_children AFTER INSERT ON parents FOR EACH ROW EXECUTE FUNCTION add_children();
TRUNCATE bunce.outbox;
INSERT INTO parents SELECT i, 'ada@example.com' FROM generate_series(1, 4) i;
SELECT coalesce(payload ->> 'parent', '-') AS parent, coalesce(payload ->> 'child', '-') AS child
FROM bunce.outbox ORDER BY id;
-- The same with the children's trigger first: the events of the block were its own.
DROP TRIGGER b_add_children ON parents;
CREATE TRIGGER _add_children AFTER INSERT ON parents FOR EACH ROW EXECUTE FUNCTION add_children();
TRUNCATE bunce.outbox;
INSERT INTO parents SELECT i, 'ada@example.com' FROM generate_series(5, 8) i;
SELECT coalesce(payload ->> 'parent', '-') AS parent, coalesce(payload ->> 'child', '-') AS child
FROM bunce.outbox ORDER BY id;
-- Another AFTER trigger of the table sees the events of the rows before it, as they are
-- written at once there.
CREATE FUNCTION count_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE '% sees % events', TG_NAME, (SELECT count(*) FROM bunce.outbox WHERE payload ? 'parent');
    RETURN NULL;
END
$$;
CREATE TRIGGER z_count_events AFTER INSERT ON parents FOR EACH STATEMENT EXECUTE FUNCTION count_events();
TRUNCATE bunce.outbox;
INSERT INTO parents SELECT i, 'ada@example.com' FROM generate_series(1, 1500) i;
DROP TRIGGER z_count_events ON parents;
DROP FUNCTION count_events();
-- A statement that fails after some of its events were made leaves none; the next one works.
DROP TRIGGER _add_children ON parents;
TRUNCATE bunce.outbox;
BEGIN;
SAVEPOINT s;
INSERT INTO parents SELECT i, CASE WHEN i < 40 THEN 'ada@example.com' ELSE 'not an email' END
FROM generate_series(1, 40) i;
ROLLBACK TO SAVEPOINT s;
INSERT INTO children SELECT i, 'ada@example.com' FROM generate_series(1, 3) i;
COMMIT;
SELECT count(*) FILTER (WHERE payload ? 'parent') AS parents, count(*) FILTER (WHERE payload ? 'child') AS children
FROM bunce.outbox;
-- A deferred constraint trigger fires at commit (or at SET CONSTRAINTS): its events are there.
CREATE CONSTRAINT TRIGGER c_parent_deferred AFTER INSERT ON parents DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "email", "deferred": "id"}');
TRUNCATE bunce.outbox;
BEGIN;
INSERT INTO parents SELECT i, 'ada@example.com' FROM generate_series(1, 3) i;
SELECT count(*) FILTER (WHERE payload ? 'deferred') AS deferred_before_commit FROM bunce.outbox;
SET CONSTRAINTS ALL IMMEDIATE;
SELECT count(*) FILTER (WHERE payload ? 'deferred') AS deferred_after_set_constraints FROM bunce.outbox;
SET CONSTRAINTS ALL DEFERRED;
INSERT INTO parents SELECT i, 'ada@example.com' FROM generate_series(4, 5) i;
COMMIT;
SELECT count(*) FILTER (WHERE payload ? 'deferred') AS deferred, count(*) FILTER (WHERE payload ? 'parent') AS parents
FROM bunce.outbox;
DROP TABLE parents, children;
DROP FUNCTION add_children();

DROP FUNCTION place_order(int, text);
DROP TABLE orders;

DROP EXTENSION bunce;

-- Ids come from the sequence of the extension as it is: made again within one transaction
-- (here after a rolled-back first try), the new sequence's ids are used, and a later
-- transaction's do not collide with them.
BEGIN;
SAVEPOINT first_try;
CREATE EXTENSION bunce;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}') > 0 AS enqueued;
ROLLBACK TO first_try;
CREATE EXTENSION bunce;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}') > 0 AS enqueued;
COMMIT;
BEGIN;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}') > 0 AS enqueued;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}') > 0 AS enqueued;
COMMIT;
SELECT count(*) AS queued, count(DISTINCT id) AS ids FROM bunce.outbox;
DROP EXTENSION bunce;
