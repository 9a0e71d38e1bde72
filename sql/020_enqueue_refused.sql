-- bunce_trigger(event_id, payload): every payload Bunce would refuse is an ERROR with a
-- SQLSTATE, a message and a hint, and nothing is enqueued.
CREATE EXTENSION bunce;

\ir sql/include/try_sql.sql

-- Not STRICT: NULL arguments reach the function and are refused, never silently ignored.
SELECT proname, proisstrict FROM pg_proc
WHERE proname = 'bunce_trigger' AND pronargs = 2;

SELECT * FROM try_sql($$SELECT bunce_trigger(NULL, '{"email": "ada@example.com"}')$$);
SELECT * FROM try_sql($$SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', NULL)$$);
SELECT * FROM try_sql($$SELECT bunce_trigger(NULL, NULL)$$);
-- a NULL from a query, not a literal
SELECT * FROM try_sql($$SELECT bunce_trigger(e, p) FROM (VALUES ('9bb6215c-e2b1-4e51-abff-3a96ca185088'::uuid, NULL::jsonb)) v(e, p)$$);

-- Every refused shape, one per line.
CREATE TEMP TABLE refused (n serial, label text, payload jsonb);
INSERT INTO refused (label, payload) VALUES
    ('array',                     '[{"email": "ada@example.com"}]'),
    ('string',                    '"ada@example.com"'),
    ('number',                    '42'),
    ('boolean',                   'true'),
    ('json null',                 'null'),
    ('empty object',              '{}'),
    ('parameters only',           '{"amount": 12, "plan": "gold"}'),
    ('email null',                '{"email": null}'),
    ('email a number',            '{"email": 42}'),
    ('email an object',           '{"email": {"address": "ada@example.com"}}'),
    ('email an array',            '{"email": ["ada@example.com"]}'),
    ('email empty',               '{"email": ""}'),
    ('email without @',           '{"email": "ada.example.com"}'),
    ('email without local part',  '{"email": "@example.com"}'),
    ('email without domain',      '{"email": "ada@"}'),
    ('email without tld',         '{"email": "ada@example"}'),
    ('email two @',               '{"email": "ada@lovelace@example.com"}'),
    ('email with space',          '{"email": "ada lovelace@example.com"}'),
    ('email dot at end',          '{"email": "ada@example."}'),
    ('email double dot',          '{"email": "ada@example..com"}'),
    ('email angle brackets',      '{"email": "Ada <ada@example.com>"}'),
    ('email newline',             E'{"email": "ada@example.com\\n"}'),
    ('customer a string',         '{"customer": "cus_42"}'),
    ('customer an array',         '{"customer": [{"customer_id": "42"}]}'),
    ('customer a number',         '{"customer": 42}'),
    ('customer empty',            '{"customer": {}}'),
    ('customer names only',       '{"customer": {"first_name": "Ada", "last_name": "Lovelace"}}'),
    ('customer_id null',          '{"customer": {"customer_id": null}}'),
    ('customer_id empty',         '{"customer": {"customer_id": ""}}'),
    ('customer_id boolean',       '{"customer": {"customer_id": true}}'),
    ('customer_id fraction',      '{"customer": {"customer_id": 4.5}}'),
    ('customer_id an object',     '{"customer": {"customer_id": {"id": 1}}}'),
    ('customer email malformed',  '{"customer": {"email": "not-an-email"}}'),
    ('customer email a number',   '{"customer": {"email": 7}}'),
    ('customer bad email, id ok', '{"customer": {"customer_id": "1", "email": "nope"}}'),
    ('email ok, customer bad',    '{"email": "ada@example.com", "customer": {"first_name": "Ada"}}'),
    ('email bad, customer ok',    '{"email": "nope", "customer": {"customer_id": "1"}}'),
    ('first_name a number',       '{"customer": {"customer_id": "1", "first_name": 5}}'),
    ('last_name an object',       '{"customer": {"customer_id": "1", "last_name": {}}}'),
    ('phone_no a number',         '{"customer": {"customer_id": "1", "phone_no": 441234567890}}'),
    ('devices an object',         '{"customer": {"customer_id": "1", "devices": {"device_type": "ios", "device_token": "t"}}}'),
    ('devices a string',          '{"customer": {"customer_id": "1", "devices": "t"}}'),
    ('device a string',           '{"customer": {"customer_id": "1", "devices": ["tok"]}}'),
    ('device missing token',      '{"customer": {"customer_id": "1", "devices": [{"device_type": "ios"}]}}'),
    ('device token a number',     '{"customer": {"customer_id": "1", "devices": [{"device_type": "ios", "device_token": 5}]}}'),
    ('device missing type',       '{"customer": {"customer_id": "1", "devices": [{"device_token": "t"}]}}'),
    ('second device bad',         '{"customer": {"customer_id": "1", "devices": [{"device_type": "ios", "device_token": "t"}, {}]}}'),
    ('number beyond double',      '{"email": "ada@example.com", "n": 1e400}'),
    ('email with no-break space', '{"email": "ada\u00a0@example.com"}'),
    ('email with line separator', '{"customer": {"email": "ada@exa\u2028mple.com"}}'),
    ('email with ideographic sp', '{"email": "ada\u3000x@example.com"}'),
    ('number written out long',   '{"email": "ada@example.com", "n": 1e70}');

SELECT r.n, r.label, t.code, t.message
FROM refused r,
     LATERAL try_sql(format('SELECT bunce_trigger(%L, %L::jsonb)',
                                '9bb6215c-e2b1-4e51-abff-3a96ca185088', r.payload)) t
ORDER BY r.n;

-- The hints, once each, with the cases that get them.
SELECT string_agg(r.n::text, ',' ORDER BY r.n) AS cases, t.hint
FROM refused r,
     LATERAL try_sql(format('SELECT bunce_trigger(%L, %L::jsonb)',
                                '9bb6215c-e2b1-4e51-abff-3a96ca185088', r.payload)) t
GROUP BY t.hint ORDER BY t.hint;

-- Limits (SQLSTATE 54000): nesting deeper than 32 levels, and a payload whose JSON text is
-- larger than bunce.max_payload_size (default 256kB). Just under both is fine.
SELECT depth, t.code, t.message, t.hint
FROM unnest(ARRAY[31, 32, 1000]) depth,
     LATERAL try_sql(format('SELECT bunce_trigger(%L, %L::jsonb)', '9bb6215c-e2b1-4e51-abff-3a96ca185088',
                            '{"email": "ada@example.com", "x": ' || repeat('[', depth) || repeat(']', depth) || '}')) t
ORDER BY depth;
SELECT size, t.code, t.message, t.hint
FROM unnest(ARRAY[262144, 262145, 4000000]) size,
     LATERAL try_sql(format('SELECT bunce_trigger(%L, jsonb_build_object(%L, %L, %L, repeat(%L, %s)))',
                            '9bb6215c-e2b1-4e51-abff-3a96ca185088', 'email', 'ada@example.com', 'x', 'x',
                            size - length('{"x": "", "email": "ada@example.com"}'))) t
ORDER BY size;
DELETE FROM bunce.outbox;

-- A malformed event id never reaches bunce_trigger: it is not a uuid.
SELECT * FROM try_sql($$SELECT bunce_trigger('not-a-uuid', '{"email": "ada@example.com"}')$$);

-- The errors are ordinary ERRORs: the statement fails as a whole.
\set VERBOSITY default
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"customer": {"first_name": "Ada"}}');
SELECT bunce_trigger(NULL, '{"email": "ada@example.com"}');

-- Nothing was enqueued, nothing was dead-lettered.
SELECT (SELECT count(*) FROM bunce.outbox) AS queued, (SELECT count(*) FROM bunce.dead_letters) AS dead;

DROP FUNCTION try_sql(text);
DROP EXTENSION bunce;
