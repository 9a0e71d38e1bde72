-- The generic trigger: column types drive the JSON of each value.
CREATE EXTENSION bunce;

CREATE DOMAIN email_address AS text CHECK (VALUE LIKE '%_@_%');
CREATE DOMAIN moment AS timestamptz;
CREATE TABLE typed (
    id       int PRIMARY KEY,
    email    email_address NOT NULL,
    tz       timestamptz,
    ts       timestamp,
    d        date,
    dom_ts   moment,
    i2       smallint,
    i8       bigint,
    n        numeric,
    f4       real,
    f8       double precision,
    b        boolean,
    j        json,
    jb       jsonb,
    t        text,
    vc       varchar(20),
    ch       char(5),
    u        uuid,
    iv       interval
);
CREATE TRIGGER typed_ins AFTER INSERT ON typed
    FOR EACH ROW EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088');

-- timestamp without time zone is read in the session's TimeZone, as PostgreSQL's own cast
-- to timestamptz does; timestamptz and date do not depend on it.
SET TimeZone = 'America/Sao_Paulo';
INSERT INTO typed (id, email, tz, ts, d, dom_ts) VALUES
    (1, 'ada@example.com', '2024-05-01 10:00:00.999999+02', '2024-05-01 22:30:00.5', '2024-05-01',
     '2024-02-29 23:59:59.9-01');
SET TimeZone = 'Europe/Berlin';
INSERT INTO typed (id, email, tz, ts, d) VALUES
    (2, 'ada@example.com', '2024-05-01 10:00:00+02', '2024-05-01 22:30:00', '2024-05-01'),
    (3, 'ada@example.com', '2024-01-01 00:30:00', '2024-01-01 00:30:00', '2024-12-31');
SELECT payload - 'email' AS payload FROM bunce.outbox ORDER BY id;
-- What Bunce's form cannot express is refused, naming the field and the column (Bunce would
-- drop it): infinity, and years past 9999 (a date this far out would overflow if turned
-- into microseconds). With bunce.on_invalid = dead_letter it is kept, in PostgreSQL's text.
INSERT INTO typed (id, email, tz) VALUES (4, 'ada@example.com', 'infinity');
INSERT INTO typed (id, email, ts) VALUES (5, 'ada@example.com', '-infinity');
INSERT INTO typed (id, email, d) VALUES (6, 'ada@example.com', '586554-01-18');
INSERT INTO typed (id, email, tz) VALUES (7, 'ada@example.com', '10000-01-01 00:00:00+00');
INSERT INTO typed (id, email, t) VALUES (8, 'ada@example.com', '10000-01-01 00:00:00+00');
INSERT INTO typed (id, email, tz) VALUES (9, 'ada@example.com', '0001-01-01 00:30:00+01');
SET bunce.on_invalid = dead_letter;
INSERT INTO typed (id, email, d) VALUES (20, 'ada@example.com', '586554-01-18');
RESET bunce.on_invalid;
-- as is a number beyond double precision, which Bunce could not read (bunce_trigger() refuses
-- it the same way)
INSERT INTO typed (id, email, n) VALUES (21, 'ada@example.com', 1e400);
SELECT payload - 'email' AS payload, reason FROM bunce.dead_letters;
DELETE FROM bunce.dead_letters;
-- the same values through PostgreSQL's casts, for comparison
SELECT '2024-05-01 22:30:00'::timestamp::timestamptz AT TIME ZONE 'UTC' AS berlin_ts_in_utc;
RESET TimeZone;
TRUNCATE bunce.outbox;

-- Numbers are JSON numbers; NaN and infinities, which JSON has no number for, are strings.
INSERT INTO typed (id, email, i2, i8, n, f4, f8) VALUES
    (10, 'ada@example.com', -32768, 9223372036854775807, 120.50, 1.5, 0.1),
    (11, 'ada@example.com', 0, -1, 'NaN', 'NaN', 'Infinity'),
    (12, 'ada@example.com', 1, 1, 'Infinity', '-Infinity', '-Infinity'),
    (13, 'ada@example.com', 1, 1, 12345678901234567890.123456789012345678, 3.4e38, 1e15),
    (14, 'ada@example.com', 1, 1, -0.000001, -0, 1.5e-5);
SELECT payload - 'email' AS payload FROM bunce.outbox ORDER BY id;
SELECT payload ->> 'id' AS id, jsonb_typeof(payload -> 'n') AS n, jsonb_typeof(payload -> 'f4') AS f4,
       jsonb_typeof(payload -> 'f8') AS f8
FROM bunce.outbox ORDER BY id;
TRUNCATE bunce.outbox;

-- Booleans, json and jsonb embedded as JSON (timestamps inside normalised), text escaped.
INSERT INTO typed (id, email, b, j, jb, t, vc, ch, u, iv) VALUES
    (20, 'ada@example.com', true, '{"a": [1, 2.50, "x"], "at": "2024-05-01T10:00:00+02:00"}',
     '{"nested": {"k": null}, "list": [true]}', 'plain', 'varchar', 'ab',
     'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1 day 2 hours'),
    (21, 'ada@example.com', false, '[1, 2]', '"just a string"',
     E'quote " backslash \\ newline \n tab \t bell \x07 unicode é ☃ 😀', NULL, NULL, NULL, NULL),
    (22, 'ada@example.com', NULL, 'null', 'null', 'paid at 2024-05-01 10:00:00+02', NULL, NULL, NULL, NULL),
    (23, 'ada@example.com', NULL, '"2024-05-01T10:00:00.5-01:00"', '"2024-05-01 10:00:00+02"',
     '2024-05-01 10:00:00.5+02', NULL, NULL, NULL, NULL),
    (24, 'ada@example.com', NULL, NULL, NULL, '2024-05-01 10:00:00', NULL, NULL, NULL, NULL);
SELECT payload - 'email' AS payload FROM bunce.outbox ORDER BY id;
-- the escaped text reads back as it was written
SELECT payload ->> 't' = E'quote " backslash \\ newline \n tab \t bell \x07 unicode é ☃ 😀' AS text_round_trips
FROM bunce.outbox WHERE payload ->> 'id' = '21';
TRUNCATE bunce.outbox;

-- A domain's constraint is PostgreSQL's business; the trigger still checks the address.
INSERT INTO typed (id, email) VALUES (30, 'ada@@example.com');
SELECT count(*) AS queued FROM bunce.outbox;

-- A mapped column holding the whole customer (jsonb): what it holds is checked.
CREATE TABLE signups (id int, customer jsonb, plan text);
CREATE TRIGGER signups_ins AFTER INSERT ON signups FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"customer": "customer", "plan": "plan"}');
INSERT INTO signups VALUES (1, '{"customer_id": 42, "first_name": "Ada", "since": "2024-05-01T10:00:00+02:00"}', 'gold');
INSERT INTO signups VALUES (2, '{"first_name": "Ada"}', 'gold');
INSERT INTO signups VALUES (3, '["not", "an", "object"]', 'gold');
INSERT INTO signups VALUES (4, '{"customer_id": "7", "devices": [{"device_type": "ios"}]}', 'gold');
SELECT payload FROM bunce.outbox ORDER BY id;
DROP TABLE signups;
TRUNCATE bunce.outbox;

-- ALTER TABLE after the trigger fired: the cached setup follows the table.
CREATE TABLE members (id int, email text, note text, at text);
CREATE TRIGGER members_all AFTER INSERT ON members FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088');
CREATE TRIGGER members_mapped AFTER INSERT ON members FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '{"email": "email", "when": "at"}');
INSERT INTO members VALUES (1, 'ada@example.com', 'first', '2024-05-01 10:00:00');
ALTER TABLE members ADD COLUMN tier int DEFAULT 3;
INSERT INTO members VALUES (2, 'ada@example.com', 'after add', '2024-05-01 10:00:00', 5);
ALTER TABLE members DROP COLUMN note;
INSERT INTO members VALUES (3, 'ada@example.com', '2024-05-01 10:00:00', 7);
-- text to timestamptz: the value becomes a timestamp, normalised
SET TimeZone = 'UTC';
ALTER TABLE members ALTER COLUMN at TYPE timestamptz USING at::timestamptz;
RESET TimeZone;
INSERT INTO members VALUES (4, 'ada@example.com', '2024-05-01 10:00:00+02', 9);
-- a mapped column renamed away: the trigger now fails, naming it
ALTER TABLE members RENAME COLUMN at TO happened_at;
INSERT INTO members VALUES (5, 'ada@example.com', '2024-05-01 10:00:00+02', 9);
-- the whole-row trigger alone follows the rename
DROP TRIGGER members_mapped ON members;
INSERT INTO members VALUES (6, 'ada@example.com', '2024-05-01 10:00:00+02', 9);
SELECT event_id, payload FROM bunce.outbox ORDER BY id;
DROP TABLE members;
TRUNCATE bunce.outbox;

-- Partitioned tables: the trigger fires for each partition's rows, whatever their column
-- order on disk.
CREATE TABLE sales (region text, id int, email text, amount numeric) PARTITION BY LIST (region);
CREATE TABLE sales_eu PARTITION OF sales FOR VALUES IN ('eu');
CREATE TABLE sales_us (amount numeric, junk int, email text, id int, region text);
ALTER TABLE sales_us DROP COLUMN junk;
ALTER TABLE sales ATTACH PARTITION sales_us FOR VALUES IN ('us');
CREATE TRIGGER sales_ins AFTER INSERT ON sales FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "email", "amount": "amount", "region": "region"}');
CREATE TRIGGER sales_all AFTER INSERT ON sales FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa');
INSERT INTO sales VALUES ('eu', 1, 'ada@example.com', 10), ('us', 2, 'grace@example.org', 20);
SELECT event_id, payload FROM bunce.outbox ORDER BY id;
DROP TABLE sales;

-- One rule set: what bunce_trigger(uuid, jsonb) refuses, the trigger refuses too, naming the
-- trigger, the table and the field, never quoting the row; bunce.on_invalid applies.
CREATE TABLE rules (id int, email text, j json, name text, tok text);
CREATE TRIGGER rules_json AFTER INSERT ON rules FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "email", "extra": "j"}');
INSERT INTO rules (id, email, j) VALUES (1, 'ada@example.com', '{"a": "x\u0000y"}');
INSERT INTO rules (id, email, j) VALUES (2, 'ada@example.com', '[1e70]');
INSERT INTO rules (id, email, j) VALUES (3, 'ada@example.com', '{"n": 1e400}');
SET bunce.on_invalid = dead_letter;
INSERT INTO rules (id, email, j) VALUES (4, 'ada@example.com', '{"a": "x\u0000y"}');
RESET bunce.on_invalid;
SELECT reason, payload ? 'unparsed' AS kept_as_text FROM bunce.dead_letters ORDER BY id;
DELETE FROM bunce.dead_letters;
DROP TRIGGER rules_json ON rules;
CREATE TRIGGER rules_devices AFTER INSERT ON rules FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
        '{"customer": {"email": "email", "devices": {"device_type": "name", "device_token": "tok"}}}');
INSERT INTO rules (id, email, name, tok) VALUES (5, 'ada@example.com', 'ios', 't');
DROP TRIGGER rules_devices ON rules;
CREATE TRIGGER rules_name AFTER INSERT ON rules FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
        '{"customer": {"email": "email", "first_name": {"x": "name"}}}');
INSERT INTO rules (id, email, name) VALUES (6, 'ada@example.com', 'Ada');
DROP TABLE rules;

DROP TABLE typed;
DROP DOMAIN email_address;
DROP DOMAIN moment;
DROP EXTENSION bunce;
