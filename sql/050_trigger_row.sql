-- The generic trigger bunce_trigger(): row level, with and without a column mapping, and
-- every way of setting it up wrong.
CREATE EXTENSION bunce;

\ir sql/include/try_sql.sql

CREATE TABLE customers (id bigint PRIMARY KEY, email text, name text, note text);

-- AFTER INSERT, no mapping: the whole row is the payload, NULL columns left out.
CREATE TRIGGER signed_up AFTER INSERT ON customers
    FOR EACH ROW EXECUTE FUNCTION bunce_trigger('11111111-1111-4111-8111-111111111111');
INSERT INTO customers VALUES (1, 'ada@example.com', 'Ada', NULL),
                             (2, 'grace@example.org', NULL, 'second');
SELECT event_id, payload FROM bunce.outbox ORDER BY id;
-- a row Bunce would refuse (no email) is an error naming the trigger and the table
INSERT INTO customers VALUES (3, NULL, 'Nobody', NULL);
INSERT INTO customers VALUES (3, 'not-an-email', 'Nobody', NULL);
SELECT count(*) AS queued, (SELECT count(*) FROM customers) AS customers FROM bunce.outbox;
DROP TRIGGER signed_up ON customers;
TRUNCATE bunce.outbox;

-- AFTER UPDATE OF status with WHEN: only the transition enqueues.
CREATE TABLE orders (
    id int PRIMARY KEY,
    customer_email text NOT NULL,
    customer_ref int,
    first_name text,
    status text NOT NULL DEFAULT 'new',
    total numeric(10, 2),
    paid_at timestamptz
);
CREATE TRIGGER order_paid AFTER UPDATE OF status ON orders
    FOR EACH ROW WHEN (NEW.status = 'paid' AND OLD.status IS DISTINCT FROM 'paid')
    EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
                                   '{"email": "customer_email", "amount": "total",
                                     "date_purchased": "paid_at", "order": "id"}');
INSERT INTO orders (id, customer_email, customer_ref, first_name, total) VALUES
    (10, 'ada@example.com', 501, 'Ada', 120.50),
    (11, 'grace@example.org', 502, 'Grace', 99.99),
    (12, 'alan@example.com', NULL, NULL, NULL);
SELECT count(*) AS after_insert FROM bunce.outbox;
UPDATE orders SET total = 121.00 WHERE id = 10;          -- not OF status
SELECT count(*) AS after_total_update FROM bunce.outbox;
UPDATE orders SET status = 'pending' WHERE id = 10;      -- not paid
SELECT count(*) AS after_pending FROM bunce.outbox;
UPDATE orders SET status = 'paid', paid_at = '2024-05-01 10:00:00.75+02' WHERE id IN (10, 12);
SELECT count(*) AS after_paid FROM bunce.outbox;
UPDATE orders SET status = 'paid' WHERE id = 10;         -- already paid: no transition
SELECT count(*) AS after_paid_again FROM bunce.outbox;
SELECT payload FROM bunce.outbox ORDER BY id;
TRUNCATE bunce.outbox;

-- AFTER DELETE uses OLD; a nested "customer" mapping, integer customer_id made a string.
CREATE TRIGGER order_deleted AFTER DELETE ON orders
    FOR EACH ROW EXECUTE FUNCTION bunce_trigger('22222222-2222-4222-8222-222222222222',
        '{"customer": {"customer_id": "customer_ref", "email": "customer_email", "first_name": "first_name"},
          "order": "id", "status": "status"}');
DELETE FROM orders WHERE id IN (10, 11);
SELECT event_id, payload FROM bunce.outbox ORDER BY id;
-- NULL columns are left out of the customer too (customer_ref and first_name are NULL)
DELETE FROM orders WHERE id = 12;
SELECT payload FROM bunce.outbox ORDER BY id DESC LIMIT 1;
DROP TRIGGER order_deleted ON orders;
TRUNCATE bunce.outbox;

-- A customer mapped to nothing but NULLs is refused.
CREATE TABLE people (id int, ref int, mail text);
CREATE TRIGGER people_ins AFTER INSERT ON people FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('22222222-2222-4222-8222-222222222222',
                                   '{"customer": {"customer_id": "ref", "email": "mail"}}');
SELECT * FROM try_sql($$INSERT INTO people VALUES (1, NULL, NULL)$$);
SELECT * FROM try_sql($$INSERT INTO people VALUES (1, NULL, 'bad@')$$);
SELECT * FROM try_sql($$INSERT INTO people VALUES (1, 7, NULL)$$);
SELECT payload FROM bunce.outbox ORDER BY id;
DROP TABLE people;
TRUNCATE bunce.outbox;

-- Mapping errors: each names the trigger and the table, with a hint, when the trigger fires.
CREATE TABLE t (id int, email text);
CREATE TEMP TABLE bad_triggers (n serial, label text, args text);
INSERT INTO bad_triggers (label, args) VALUES
    ('mapping not JSON',        $$'9bb6215c-e2b1-4e51-abff-3a96ca185088', '{email: email}'$$),
    ('mapping an array',        $$'9bb6215c-e2b1-4e51-abff-3a96ca185088', '["email"]'$$),
    ('mapping a string',        $$'9bb6215c-e2b1-4e51-abff-3a96ca185088', '"email"'$$),
    ('value a number',          $$'9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": 1}'$$),
    ('value null',              $$'9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": null}'$$),
    ('value empty',             $$'9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": ""}'$$),
    ('empty mapping',           $$'9bb6215c-e2b1-4e51-abff-3a96ca185088', '{}'$$),
    ('empty customer',          $$'9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "email", "customer": {}}'$$),
    ('missing column',          $$'9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "mail"}'$$),
    ('missing nested column',   $$'9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"customer": {"customer_id": "cust"}}'$$),
    ('column name case',        $$'9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "EMAIL"}'$$),
    ('bad event id',            $$'not-a-uuid'$$),
    ('bad event id, mapping',   $$'9bb6215c-e2b1-4e51-abff-3a96ca18508', '{"email": "email"}'$$),
    ('no arguments',            ''),
    ('three arguments',         $$'9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "email"}', 'x'$$),
    ('mapping 9 levels deep',   format('%L, %L', '9bb6215c-e2b1-4e51-abff-3a96ca185088',
                                       repeat('{"a": ', 9) || '"email"' || repeat('}', 9))),
    ('mapping 40000 levels deep', format('%L, %L', '9bb6215c-e2b1-4e51-abff-3a96ca185088',
                                       repeat('{"a": ', 40000) || '"email"' || repeat('}', 40000)));
CREATE TEMP TABLE bad_results AS
SELECT b.n, b.label, r.*
FROM bad_triggers b,
     LATERAL try_sql(format($f$
         CREATE TRIGGER "bad %s" AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION bunce_trigger(%s);
         INSERT INTO t VALUES (1, 'ada@example.com');$f$, b.n, b.args)) r;
SELECT n, label, code, message FROM bad_results ORDER BY n;
SELECT string_agg(n::text, ',' ORDER BY n) AS cases, hint FROM bad_results GROUP BY hint ORDER BY 1;
-- none of them was left behind (each attempt was rolled back), nothing enqueued
SELECT count(*) AS triggers_left FROM pg_trigger WHERE tgrelid = 't'::regclass;
SELECT count(*) AS queued FROM bunce.outbox;

-- A missing column (SQLSTATE 42703) is refused when the trigger is created, not when the
-- business write first fires it; with the column added, the same trigger is fine.
SELECT * FROM try_sql($$CREATE TRIGGER t_mail AFTER INSERT ON t FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "mail"}')$$);
ALTER TABLE t ADD COLUMN mail text;
CREATE TRIGGER t_mail AFTER INSERT ON t FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "mail"}');
INSERT INTO t VALUES (1, 'ignored@example.com', 'ada@example.com');
SELECT payload FROM bunce.outbox;
-- A later DROP COLUMN that breaks the mapping goes through with a WARNING naming the trigger;
-- the trigger then refuses rows, naming the column.
ALTER TABLE t DROP COLUMN mail;
SELECT * FROM try_sql($$INSERT INTO t VALUES (1, 'ada@example.com')$$);
DROP TRIGGER t_mail ON t;
TRUNCATE bunce.outbox;

-- BEFORE triggers, INSTEAD OF and TRUNCATE are refused when created.
SELECT * FROM try_sql($$CREATE TRIGGER t_before BEFORE INSERT ON t FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088')$$);
SELECT * FROM try_sql($$CREATE TRIGGER t_before_stmt BEFORE INSERT ON t FOR EACH STATEMENT
    EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088')$$);
SELECT * FROM try_sql($$CREATE TRIGGER t_truncate AFTER TRUNCATE ON t FOR EACH STATEMENT
    EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088')$$);
CREATE VIEW v AS SELECT * FROM t;
SELECT * FROM try_sql($$CREATE TRIGGER v_instead INSTEAD OF INSERT ON v FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088')$$);
-- Uuids in every form uuid_in takes, braces included; not others.
SELECT * FROM try_sql($$CREATE TRIGGER t_braces AFTER INSERT ON t FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('{9bb6215c-e2b1-4e51-abff-3a96ca185088}')$$);
SELECT * FROM try_sql($$CREATE TRIGGER t_groups AFTER INSERT ON t FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('9bb6-215c-e2b1-4e51-abff-3a96-ca18-5088')$$);
SELECT * FROM try_sql($$CREATE TRIGGER t_bad_dash AFTER INSERT ON t FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('9bb6215c--e2b1-4e51-abff-3a96ca185088')$$);
DROP TRIGGER t_braces ON t;
DROP TRIGGER t_groups ON t;
DROP VIEW v;

-- Called directly, not as a trigger.
SELECT * FROM try_sql($$SELECT bunce_trigger()$$);
SELECT count(*) AS queued FROM bunce.outbox;

-- Two triggers on one table each enqueue their own event; a trigger with its mapping
-- replaced (CREATE OR REPLACE TRIGGER) uses the new mapping.
CREATE TRIGGER t_a AFTER INSERT ON t FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '{"email": "email", "n": "id"}');
CREATE TRIGGER t_b AFTER INSERT ON t FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb', '{"email": "email"}');
INSERT INTO t VALUES (7, 'ada@example.com');
CREATE OR REPLACE TRIGGER t_b AFTER INSERT ON t FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb', '{"email": "email", "replaced": "id"}');
INSERT INTO t VALUES (8, 'ada@example.com');
SELECT event_id, payload FROM bunce.outbox ORDER BY id;

-- A session that creates, fires and drops many triggers keeps the setup of those that are
-- left only (the cache of dropped ones is freed the next time a bunce trigger fires).
DROP TRIGGER t_a ON t;
DROP TRIGGER t_b ON t;
DO $$
BEGIN
    FOR i IN 1..40 LOOP
        EXECUTE format('CREATE TRIGGER churn_%s AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION '
                       'bunce_trigger(%L, %L)', i, '9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "email"}');
        INSERT INTO t VALUES (i, 'ada@example.com');
        EXECUTE format('DROP TRIGGER churn_%s ON t', i);
    END LOOP;
END
$$;
CREATE TABLE t_last (id int, email text);
CREATE TRIGGER t_last_ev AFTER INSERT ON t_last FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088');
INSERT INTO t_last VALUES (1, 'ada@example.com');
SELECT count(*) AS trigger_setups_kept FROM pg_backend_memory_contexts WHERE name = 'bunce trigger setup';

DROP TABLE t, t_last, orders, customers;
DROP FUNCTION try_sql(text);
DROP EXTENSION bunce;
