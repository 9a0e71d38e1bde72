-- Timestamps in payloads: every date-time string with an offset becomes YYYY-MM-DDTHH:MM:SSZ
-- in UTC, fractional seconds truncated (never rounded); anything else is left alone.
CREATE EXTENSION bunce;

CREATE TEMP TABLE cases (n serial, label text, given jsonb);
INSERT INTO cases (label, given) VALUES
    -- normalised
    ('already right',               '"2024-05-01T10:00:00Z"'),
    ('offset +05:45',               '"2024-05-01T10:00:00+05:45"'),
    ('offset -03:30',               '"2024-05-01T10:00:00-03:30"'),
    ('offset +0545',                '"2024-05-01T10:00:00+0545"'),
    ('offset +05',                  '"2024-05-01T10:00:00+05"'),
    ('offset +00:00',               '"2024-05-01T10:00:00+00:00"'),
    ('offset -00:00',               '"2024-05-01T10:00:00-00:00"'),
    ('lower-case t and z',          '"2024-05-01t10:00:00z"'),
    ('space separator',             '"2024-05-01 10:00:00+02"'),
    ('no seconds',                  '"2024-05-01T10:00Z"'),
    ('fraction truncated',          '"2024-05-01T10:00:00.999999Z"'),
    ('23:59:59.999Z stays the day', '"2024-05-01T23:59:59.999Z"'),
    ('fraction with offset',        '"2024-05-01T10:00:00.123+02:00"'),
    ('fraction with comma',         '"2024-05-01T10:00:00,5Z"'),
    ('nanoseconds',                 '"2024-05-01T10:00:00.123456789Z"'),
    ('next day',                    '"2024-05-01T22:30:00-03:00"'),
    ('previous day',                '"2024-05-01T01:00:00+05:45"'),
    ('next month',                  '"2024-04-30T23:00:00-02:00"'),
    ('next year',                   '"2024-12-31T23:59:59-00:01"'),
    ('previous year',               '"2025-01-01T00:00:00+00:01"'),
    ('leap day',                    '"2024-02-29T12:00:00+01:00"'),
    ('onto leap day',               '"2024-02-28T23:00:00-01:00"'),
    ('past leap day',               '"2024-02-29T23:00:00-01:00"'),
    ('2000 is leap',                '"2000-02-29T00:00:00Z"'),
    ('24:00:00',                    '"2024-05-01T24:00:00Z"'),
    ('24:00:00 at year end',        '"2024-12-31T24:00:00+01:00"'),
    ('year 1',                      '"0001-01-01T00:00:00Z"'),
    ('year 9999',                   '"9999-12-31T23:59:59Z"'),
    -- left alone
    ('date only',                   '"2024-05-01"'),
    ('no offset',                   '"2024-05-01T10:00:00"'),
    ('no offset, space',            '"2024-05-01 10:00:00"'),
    ('no offset, fraction',         '"2024-05-01T10:00:00.5"'),
    ('a sentence with a date',      '"paid on 2024-05-01T10:00:00Z, thanks"'),
    ('date then text',              '"2024-05-01T10:00:00Z and more"'),
    ('month 13',                    '"2024-13-01T10:00:00Z"'),
    ('month 00',                    '"2024-00-10T10:00:00Z"'),
    ('February 30',                 '"2024-02-30T10:00:00Z"'),
    ('Feb 29, not a leap year',     '"2023-02-29T10:00:00Z"'),
    ('1900 is not leap',            '"1900-02-29T10:00:00Z"'),
    ('April 31',                    '"2024-04-31T10:00:00Z"'),
    ('hour 25',                     '"2024-05-01T25:00:00Z"'),
    ('24:00:01',                    '"2024-05-01T24:00:01Z"'),
    ('minute 60',                   '"2024-05-01T10:60:00Z"'),
    ('second 60',                   '"2024-05-01T10:00:60Z"'),
    ('offset +16:00',               '"2024-05-01T10:00:00+16:00"'),
    ('offset minutes 60',           '"2024-05-01T10:00:00+05:60"'),
    ('year 0',                      '"0000-05-01T10:00:00Z"'),
    ('two-digit year',              '"24-05-01T10:00:00Z"'),
    ('slashes',                     '"2024/05/01T10:00:00Z"'),
    ('empty fraction',              '"2024-05-01T10:00:00.Z"'),
    ('letter offset',               '"2024-05-01T10:00:00 CET"'),
    ('leading space',               '" 2024-05-01T10:00:00Z"'),
    ('empty string',                '""'),
    -- not strings: left alone
    ('number',                      '20240501'),
    ('fraction',                    '120.50'),
    ('boolean',                     'true'),
    ('null',                        'null');

CREATE TEMP TABLE enqueued AS
SELECT c.n, bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
                          jsonb_build_object('email', 'ada@example.com', 'v', c.given)) AS id
FROM cases c;
SELECT c.n, c.label, c.given, o.payload -> 'v' AS stored
FROM cases c JOIN enqueued e USING (n) JOIN bunce.outbox o ON o.id = e.id
ORDER BY c.n;

-- Everywhere in the payload: nested objects, arrays, the customer, keys untouched.
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
    '{"customer": {"customer_id": "1", "signed_up": "2024-05-01T10:00:00+02:00"},
      "2024-05-01T10:00:00+02:00": "a key is not a value",
      "items": [{"at": "2024-05-01T10:00:00.5+02:00"}, ["2024-05-01 12:00:00-01:00", 3]],
      "amount": 120.5, "count": 3}') > 0 AS enqueued;
SELECT payload FROM bunce.outbox ORDER BY id DESC LIMIT 1;

-- PostgreSQL's own JSON form of timestamptz (ISO with offset and fraction) is normalised.
SET TimeZone = 'Asia/Kathmandu';
SELECT jsonb_build_object('d', '2024-05-01 10:00:00.987654+02'::timestamptz) AS postgres_form;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
    jsonb_build_object('email', 'ada@example.com',
                       'd', '2024-05-01 10:00:00.987654+02'::timestamptz,
                       'e', '2024-05-01 23:59:59.999999+00'::timestamptz,
                       'f', to_jsonb('2024-05-01 10:00:00+02'::timestamptz))) > 0 AS enqueued;
SELECT payload FROM bunce.outbox ORDER BY id DESC LIMIT 1;
-- A timestamp without time zone has no offset in JSON: left alone (its meaning is unknown).
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
    jsonb_build_object('email', 'ada@example.com', 'd', '2024-05-01 10:00:00'::timestamp,
                       'day', '2024-05-01'::date)) > 0 AS enqueued;
SELECT payload FROM bunce.outbox ORDER BY id DESC LIMIT 1;
RESET TimeZone;

-- Numbers stay numbers, exactly as written, even when the payload is rewritten for a
-- timestamp; strings that look like numbers stay strings.
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
    jsonb_build_object('email', 'ada@example.com', 'i', 42, 'neg', -7, 'f', 120.5, 'big', 9007199254740993,
                       'money', 120.50, 'huge', 123456789012345678901234567890,
                       'precise', 0.1000000000000000000001,
                       's', '42', 'd', '2024-05-01T10:00:00+02:00')) > 0 AS enqueued;
SELECT payload, jsonb_typeof(payload -> 'i') AS i, jsonb_typeof(payload -> 'f') AS f,
       jsonb_typeof(payload -> 'big') AS big, jsonb_typeof(payload -> 's') AS s
FROM bunce.outbox ORDER BY id DESC LIMIT 1;

-- The customer's fields are identities, not times: never rewritten, however they look.
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
    '{"customer": {"customer_id": "2024-05-01 10:00:00+02", "phone_no": "2024-05-01T10:00:00+02:00",
                   "first_name": "2024-05-01T10:00Z", "email": "ada@example.com",
                   "devices": [{"device_type": "ios", "device_token": "2024-05-01T10:00:00+02:00"}]},
      "at": "2024-05-01 10:00:00+02"}') > 0 AS enqueued;
SELECT payload FROM bunce.outbox ORDER BY id DESC LIMIT 1;

-- PostgreSQL's own JSON of any timestamptz is normalised: historical offsets in seconds
-- (Amsterdam before 1937), and a leap second read as the next minute's first.
SET TimeZone = 'Europe/Amsterdam';
SELECT to_jsonb('1900-06-01 12:00:00+00'::timestamptz) AS postgres_json;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
    jsonb_build_object('email', 'ada@example.com', 'at', '1900-06-01 12:00:00+00'::timestamptz,
                       'leap', '2016-12-31T23:59:60Z')) > 0 AS enqueued;
SELECT payload FROM bunce.outbox ORDER BY id DESC LIMIT 1;
RESET TimeZone;

-- A date-time Bunce's form cannot hold (past year 9999, before year 1 in UTC) is refused,
-- naming the field: Bunce would drop it.
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
    jsonb_build_object('email', 'ada@example.com', 'shipped', '10000-01-01 00:00:00+00'::timestamptz));
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
    '{"email": "ada@example.com", "when": ["0001-01-01T00:30:00+01:00"]}');


-- Checked value by value on the jsonb, in the order of the checks on text: a number beyond
-- double precision before the recipient, the recipient before other values, and the
-- first value refused in document order; only customer.customer_id becomes a string.
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
    '{"email": "not an address", "a": "9999-12-31T23:30:00-01:00", "b": 1e400}');
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
    '{"email": "not an address", "a": "9999-12-31T23:30:00-01:00"}');
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
    '{"email": "ada@example.com", "b": 1e70, "a": "9999-12-31T23:30:00-01:00"}');
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
    '{"customer": {"customer_id": 7, "devices": [], "n": {"customer_id": 8}}, "x": {"customer_id": 9},
      "d": ["2024-05-01", {"e": "2024-05-01T10:00+02:00"}]}') > 0 AS enqueued;
SELECT payload FROM bunce.outbox ORDER BY id DESC LIMIT 1;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"customer": {"customer_id": 7.5}}');
DROP EXTENSION bunce;
