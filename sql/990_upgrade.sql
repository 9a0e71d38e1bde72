-- Every upgrade path from the oldest version ends where a fresh install of the newest does.
-- What "the same" means: the same objects, table columns, indexes, privileges and comments.
CREATE FUNCTION public.bunce_shape() RETURNS TABLE (item text) LANGUAGE sql AS $$
    SELECT 'object: ' || pg_describe_object(classid, objid, objsubid)
    FROM pg_depend
    WHERE refclassid = 'pg_extension'::regclass
      AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bunce') AND deptype = 'e'
    UNION ALL
    SELECT format('column: %s.%s %s %s default %s', c.relname, a.attname,
                  format_type(a.atttypid, a.atttypmod), CASE WHEN a.attnotnull THEN 'not null' ELSE '' END,
                  pg_get_expr(d.adbin, d.adrelid))
    FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
    LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
    WHERE c.relnamespace = to_regnamespace('bunce') AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'index: ' || regexp_replace(pg_get_indexdef(indexrelid), 'INDEX \S+ ON', 'INDEX ON')
    FROM pg_index WHERE indrelid IN (SELECT oid FROM pg_class WHERE relnamespace = to_regnamespace('bunce'))
    UNION ALL
    SELECT format('options: %s %s', relname, reloptions) FROM pg_class
    WHERE relnamespace = to_regnamespace('bunce') AND reloptions IS NOT NULL
    UNION ALL
    SELECT format('acl: %s %s', relname, relacl) FROM pg_class WHERE relnamespace = to_regnamespace('bunce')
    UNION ALL
    SELECT format('function: %s %s %s %s', p.oid::regprocedure, p.proacl, p.prosecdef,
                  obj_description(p.oid, 'pg_proc'))
    FROM pg_proc p
    WHERE p.oid IN (SELECT objid FROM pg_depend WHERE refclassid = 'pg_extension'::regclass
                    AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bunce'))
    UNION ALL
    SELECT format('config dump: %s', unnest(extconfig)::regclass) FROM pg_extension WHERE extname = 'bunce'
$$;

SELECT min(version) AS oldest FROM pg_available_extension_versions WHERE name = 'bunce' \gset
CREATE EXTENSION bunce VERSION :'oldest';
ALTER EXTENSION bunce UPDATE;
SELECT extversion = (SELECT default_version FROM pg_available_extensions WHERE name = 'bunce') AS at_newest
FROM pg_extension WHERE extname = 'bunce';
CREATE TEMP TABLE upgraded AS SELECT * FROM public.bunce_shape();
DROP EXTENSION bunce;

CREATE EXTENSION bunce;
CREATE TEMP TABLE fresh AS SELECT * FROM public.bunce_shape();
DROP EXTENSION bunce;

-- Both differences must be empty.
(SELECT 'only after upgrade' AS side, item FROM upgraded EXCEPT SELECT 'only after upgrade', item FROM fresh)
UNION ALL
(SELECT 'only when fresh', item FROM fresh EXCEPT SELECT 'only when fresh', item FROM upgraded)
ORDER BY 1, 2;
SELECT count(*) > 20 AS compared_something FROM fresh;
DROP FUNCTION public.bunce_shape();
