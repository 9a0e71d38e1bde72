-- bunce_trigger(event_id, payload): every payload shape Bunce accepts is enqueued, in the
-- caller's transaction, as it was given (or normalised, see 030_normalise).
CREATE EXTENSION bunce;

-- The outbox starts empty; each call returns the new outbox id.
SELECT count(*) AS queued FROM bunce.outbox;

-- email only
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
                     jsonb_build_object('email', 'ada@example.com')) > 0 AS enqueued;
-- a customer with customer_id
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
                     '{"customer": {"customer_id": "cus_42"}}') > 0 AS enqueued;
-- a customer with email
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
                     '{"customer": {"email": "grace@example.org"}}') > 0 AS enqueued;
-- a numeric customer_id becomes a string
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
                     '{"customer": {"customer_id": 42}}') > 0 AS enqueued;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
                     jsonb_build_object('customer', jsonb_build_object('customer_id', 9007199254740993::bigint)))
       > 0 AS enqueued;
-- the optional customer fields, and devices
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
                     '{"customer": {"customer_id": "7", "email": "alan@example.com",
                                    "first_name": "Alan", "last_name": "Turing",
                                    "phone_no": "+441234567890",
                                    "devices": [{"device_type": "ios", "device_token": "tok-1"},
                                                {"device_type": "android", "device_token": "tok-2"}]}}')
       > 0 AS enqueued;
-- an empty device list, and optional fields set to null, are fine
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
                     '{"customer": {"customer_id": "8", "first_name": null, "devices": []}}') > 0 AS enqueued;
-- null is the same as absent, for devices as for the other optional fields
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
                     '{"customer": {"customer_id": "8", "devices": null}}') > 0 AS enqueued;
-- both email and customer
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
                     '{"email": "ada@example.com", "customer": {"customer_id": "1"}}') > 0 AS enqueued;
-- event parameters: text, numeric, timestamp
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
                     jsonb_build_object('email', 'ada@example.com', 'plan', 'gold', 'amount', 120.5,
                                        'count', 3, 'renews_at', '2024-05-01T10:00:00Z')) > 0 AS enqueued;
-- nested arrays and objects as parameter values; booleans and nulls pass through
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
                     '{"email": "ada@example.com", "items": [[1, 2], ["a", {"b": [true, null]}]],
                       "meta": {"source": "web", "tags": []}, "flag": false, "gone": null}') > 0 AS enqueued;
-- a different event id is kept as given
SELECT bunce_trigger('00000000-0000-4000-8000-000000000001', '{"email": "x@y.io"}') > 0 AS enqueued;

-- What was enqueued, in order: payloads exactly as given, customer_id made a string.
SELECT event_id, payload FROM bunce.outbox ORDER BY id;

-- Fresh rows: due now, never attempted, each with its own idempotency key.
SELECT count(*) AS rows,
       count(DISTINCT idempotency_key) AS keys,
       bool_and(attempts = 0 AND sending_since IS NULL AND first_attempt_at IS NULL
                AND last_status IS NULL AND last_error IS NULL AND NOT possible_duplicate) AS fresh,
       bool_and(next_attempt_at = enqueued_at AND enqueued_at <= now()) AS due_when_enqueued
FROM bunce.outbox;

-- Nothing refused, nothing dead.
SELECT count(*) AS dead FROM bunce.dead_letters;

DROP EXTENSION bunce;
