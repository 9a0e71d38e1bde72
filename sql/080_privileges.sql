-- Privileges: customer data, so PUBLIC gets nothing; enqueueing needs EXECUTE on
-- bunce_trigger(uuid, jsonb); a table owner's bunce trigger works for whoever writes the table;
-- the API key is for superusers only and never shown.
CREATE EXTENSION bunce;

\ir sql/include/try_sql.sql
GRANT EXECUTE ON FUNCTION try_sql(text) TO PUBLIC;

CREATE ROLE regress_bunce_app;
CREATE ROLE regress_bunce_owner;
CREATE ROLE regress_bunce_reader IN ROLE bunce_admin;

-- What PUBLIC may do: nothing.
SELECT has_schema_privilege('regress_bunce_app', 'bunce', 'USAGE') AS schema_usage,
       has_function_privilege('regress_bunce_app', 'bunce_trigger(uuid, jsonb)', 'EXECUTE') AS enqueue,
       has_function_privilege('regress_bunce_app', 'bunce_trigger()', 'EXECUTE') AS trigger_fn;

SET ROLE regress_bunce_app;
SELECT * FROM try_sql('SELECT count(*) FROM bunce.outbox');
SELECT * FROM try_sql('SELECT count(*) FROM bunce.dead_letters');
SELECT * FROM try_sql('SELECT count(*) FROM bunce.status');
SELECT * FROM try_sql('SELECT bunce.retry_dead_letters()');
SELECT * FROM try_sql($$SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}')$$);
RESET ROLE;

-- With EXECUTE granted, the app enqueues; it still cannot read the outbox.
GRANT EXECUTE ON FUNCTION bunce_trigger(uuid, jsonb) TO regress_bunce_app;
SET ROLE regress_bunce_app;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com", "by": "app"}') > 0 AS enqueued;
SELECT * FROM try_sql('SELECT count(*) FROM bunce.outbox');
RESET ROLE;
SELECT payload FROM bunce.outbox ORDER BY id;
REVOKE EXECUTE ON FUNCTION bunce_trigger(uuid, jsonb) FROM regress_bunce_app;

-- A table owner creates a bunce trigger (that needs EXECUTE on the trigger function); an app
-- role with no bunce privilege at all writes the table, and the trigger fires.
CREATE SCHEMA regress_shop AUTHORIZATION regress_bunce_owner;
GRANT USAGE ON SCHEMA regress_shop TO regress_bunce_app;
SET ROLE regress_bunce_owner;
CREATE TABLE regress_shop.orders (id int, email text);
GRANT INSERT, UPDATE, DELETE, SELECT ON regress_shop.orders TO regress_bunce_app;
SELECT * FROM try_sql($$CREATE TRIGGER orders_ins AFTER INSERT ON regress_shop.orders FOR EACH ROW
                        EXECUTE FUNCTION bunce_trigger('22222222-2222-4222-8222-222222222222')$$);
RESET ROLE;
GRANT EXECUTE ON FUNCTION bunce_trigger() TO regress_bunce_owner;
SET ROLE regress_bunce_owner;
CREATE TRIGGER orders_ins AFTER INSERT ON regress_shop.orders FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('22222222-2222-4222-8222-222222222222');
RESET ROLE;
REVOKE EXECUTE ON FUNCTION bunce_trigger() FROM regress_bunce_owner;
SET ROLE regress_bunce_app;
INSERT INTO regress_shop.orders VALUES (1, 'ada@example.com');
-- a refused row is an error for the app too
INSERT INTO regress_shop.orders VALUES (2, 'not an email');
RESET ROLE;
SELECT event_id, payload FROM bunce.outbox WHERE event_id = '22222222-2222-4222-8222-222222222222' ORDER BY id;

-- bunce.on_invalid = dead_letter works for such an app role too: the dead letter is written
-- although the role cannot touch bunce.dead_letters itself.
SET ROLE regress_bunce_app;
SET bunce.on_invalid = dead_letter;
INSERT INTO regress_shop.orders VALUES (3, 'not an email');
RESET bunce.on_invalid;
SELECT * FROM try_sql('SELECT count(*) FROM bunce.dead_letters');
RESET ROLE;
-- the same for a direct call by a role with EXECUTE on bunce_trigger(uuid, jsonb) only; the
-- dead letter is written with schema-qualified functions, whatever the caller's search_path
CREATE SCHEMA regress_evil;
CREATE FUNCTION regress_evil.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'regress_evil.now() was called'; END $$;
CREATE FUNCTION regress_evil.gen_random_uuid() RETURNS uuid LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'regress_evil.gen_random_uuid() was called'; END $$;
CREATE FUNCTION regress_evil.nextval(regclass) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'regress_evil.nextval() was called'; END $$;
GRANT USAGE ON SCHEMA regress_evil TO PUBLIC;
GRANT EXECUTE ON FUNCTION bunce_trigger(uuid, jsonb) TO regress_bunce_app;
SET ROLE regress_bunce_app;
SET search_path = regress_evil, pg_catalog, public;
SET bunce.on_invalid = dead_letter;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "direct call"}') > 0 AS returned_an_id;
RESET bunce.on_invalid;
RESET search_path;
RESET ROLE;
REVOKE EXECUTE ON FUNCTION bunce_trigger(uuid, jsonb) FROM regress_bunce_app;
DROP SCHEMA regress_evil CASCADE;
SELECT count(*) AS orders FROM regress_shop.orders;
SELECT event_id, payload, reason, message FROM bunce.dead_letters ORDER BY id;

-- bunce_admin reads everything and manages dead letters.
SET ROLE regress_bunce_reader;
SELECT count(*) AS outbox_rows FROM bunce.outbox;
SELECT reason, count(*) FROM bunce.dead_letters GROUP BY reason;
SELECT state IS NOT NULL AS has_state FROM bunce.status;
SELECT bunce.discard_dead_letters() AS discarded;
-- it may read but not write the tables directly
SELECT * FROM try_sql('DELETE FROM bunce.outbox');
RESET ROLE;

-- The API key: superuser only, and never shown, not even to a superuser.
SET ROLE regress_bunce_app;
SELECT * FROM try_sql('SHOW bunce.api_key');
SELECT * FROM try_sql($$SELECT current_setting('bunce.api_key')$$);
SELECT * FROM try_sql($$SET bunce.api_key = 'sk_test_stolen'$$);
SELECT count(*) AS visible_in_pg_settings FROM pg_settings WHERE name = 'bunce.api_key';
RESET ROLE;
-- Only the server configuration may hold the key: not a session, a database or a role
-- (pg_db_role_setting is readable by every role), not even for a superuser (SQLSTATE 42501,
-- and the key is not quoted). The key is assembled so that it does not appear in this
-- file's echo either.
SELECT 'sk_test_' || 'secret' || '123' AS key \gset
SELECT * FROM try_sql(format('SET bunce.api_key = %L', :'key'));
SELECT * FROM try_sql(format('SET LOCAL bunce.api_key = %L', :'key'));
SELECT * FROM try_sql(format('SELECT set_config(%L, %L, false)', 'bunce.api_key', :'key'));
SELECT * FROM try_sql(format('ALTER DATABASE %I SET bunce.api_key = %L', current_database(), :'key'));
SELECT * FROM try_sql(format('ALTER ROLE regress_bunce_app SET bunce.api_key = %L', :'key'));
SELECT * FROM try_sql(format('ALTER ROLE ALL SET bunce.api_key = %L', :'key'));
SELECT * FROM try_sql(format('CREATE FUNCTION regress_keyed() RETURNS int LANGUAGE sql SET bunce.api_key = %L AS $f$ SELECT 1 $f$', :'key'));
SELECT count(*) AS stored_settings FROM pg_db_role_setting WHERE array_to_string(setconfig, ',') LIKE '%bunce.api_key%';
SHOW bunce.api_key;
SELECT current_setting('bunce.api_key') AS current_setting;
SELECT name, setting, reset_val, boot_val FROM pg_settings WHERE name = 'bunce.api_key';
SELECT count(*) AS leaks FROM pg_settings
WHERE setting LIKE '%secret%' OR reset_val LIKE '%secret%' OR boot_val LIKE '%secret%';
SELECT count(*) AS shown_by_show_all FROM (SELECT * FROM pg_show_all_settings()) s WHERE name = 'bunce.api_key';
-- The key file and the proxy are superuser-only too (a proxy URL may carry credentials).
SET ROLE regress_bunce_app;
SELECT * FROM try_sql('SHOW bunce.api_key_file');
SELECT * FROM try_sql('SHOW bunce.https_proxy');
SELECT count(*) AS visible FROM pg_settings WHERE name IN ('bunce.api_key_file', 'bunce.https_proxy');
RESET ROLE;

-- bunce.notify_enqueued is for bunce's own functions: not even bunce_admin may skew the
-- counters with it.
SET ROLE regress_bunce_reader;
SELECT * FROM try_sql('SELECT bunce.notify_enqueued(1000)');
RESET ROLE;
SELECT has_function_privilege('bunce_admin', 'bunce.notify_enqueued(bigint)', 'EXECUTE') AS admin_may_notify;

-- A read-only transaction cannot enqueue (SQLSTATE 25006).
BEGIN READ ONLY;
SELECT * FROM try_sql($$SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}')$$);
COMMIT;
SET default_transaction_read_only = on;
SELECT * FROM try_sql($$SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}')$$);
RESET default_transaction_read_only;

DROP SCHEMA regress_shop CASCADE;
DROP EXTENSION bunce;

-- bunce_admin reads every event. A bunce_admin that can log in was not made by bunce: it is
-- refused; the members of an existing one are named in a WARNING.
ALTER ROLE bunce_admin LOGIN;
SELECT * FROM try_sql('CREATE EXTENSION bunce');
ALTER ROLE bunce_admin NOLOGIN CREATEROLE;
SELECT code, message FROM try_sql('CREATE EXTENSION bunce');
ALTER ROLE bunce_admin NOCREATEROLE;
-- members through another role are named too
CREATE ROLE regress_bunce_mid IN ROLE bunce_admin;
GRANT regress_bunce_mid TO regress_bunce_app;
CREATE EXTENSION bunce;
DROP EXTENSION bunce;
DROP ROLE regress_bunce_mid;
DROP FUNCTION try_sql(text);
DROP ROLE regress_bunce_app, regress_bunce_owner, regress_bunce_reader;
