-- The names DESIGN.md fixes: bunce_trigger in the schema given to CREATE EXTENSION,
-- internals in schema bunce, the bunce.* settings.
CREATE SCHEMA app_schema;
CREATE EXTENSION bunce SCHEMA app_schema;

SELECT e.extname, n.nspname AS extension_schema FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'bunce';

-- Every function of the extension and where it lives.
SELECT p.pronamespace::regnamespace AS schema, p.oid::regprocedure AS function, p.prorettype::regtype AS returns,
       p.proisstrict AS strict, p.provolatile AS volatility
FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
WHERE d.refclassid = 'pg_extension'::regclass AND d.classid = 'pg_proc'::regclass
  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bunce')
ORDER BY p.pronamespace::regnamespace::text, p.oid::regprocedure::text;
-- Tables, views, sequences.
SELECT c.relnamespace::regnamespace AS schema, c.relname, c.relkind
FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
WHERE d.refclassid = 'pg_extension'::regclass AND d.classid = 'pg_class'::regclass
  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bunce')
ORDER BY c.relnamespace::regnamespace::text, c.relname;

-- Called qualified, and unqualified with the schema on the search_path.
SELECT app_schema.bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}') > 0 AS enqueued;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "ada@example.com"}');
SET search_path = app_schema, public;
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "grace@example.org"}') > 0 AS enqueued;
RESET search_path;
CREATE TABLE app_table (id int, email text);
CREATE TRIGGER app_ins AFTER INSERT ON app_table FOR EACH ROW
    EXECUTE FUNCTION app_schema.bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088');
-- the trigger still writes to bunce.outbox, whatever the search_path
SET search_path = pg_catalog;
INSERT INTO public.app_table VALUES (1, 'alan@example.com');
RESET search_path;
SELECT payload FROM bunce.outbox ORDER BY id;
DROP TABLE app_table;

-- The extension is not relocatable: it stays where it was created.
ALTER EXTENSION bunce SET SCHEMA public;

DROP EXTENSION bunce;
DROP SCHEMA app_schema;

-- Settings (bunce.api_key is hidden from pg_settings, see 080_privileges).
SELECT name FROM pg_settings WHERE name LIKE 'bunce.%' ORDER BY name;
-- the defaults DESIGN.md gives
SELECT name, boot_val FROM pg_settings
WHERE name IN ('bunce.api_url', 'bunce.rate_limit', 'bunce.enabled', 'bunce.on_invalid') ORDER BY name;
-- Every setting DESIGN.md names exists (bunce.api_key checked in 080_privileges).
SELECT n AS setting, EXISTS (SELECT FROM pg_settings WHERE name = n) AS exists
FROM unnest(ARRAY['bunce.api_url', 'bunce.database', 'bunce.rate_limit', 'bunce.max_in_flight',
                  'bunce.request_timeout', 'bunce.max_attempts', 'bunce.enabled', 'bunce.on_invalid']) n;
-- The bunce. prefix is reserved: a typo is an error, not a silent new placeholder.
SET bunce.rate_limt = 10;
-- Server-wide settings cannot be changed per session.
SET bunce.rate_limit = 10;
SET bunce.database = 'other';
-- bunce.database is a list of names; one that does not parse is refused.
ALTER SYSTEM SET bunce.database = 'shop,,billing';
ALTER SYSTEM SET bunce.database = 'shop, billing, shop';
ALTER SYSTEM SET bunce.database = '"shop';
