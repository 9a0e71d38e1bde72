-- Included with \ir by the regress files that check errors (not a test itself: the Makefile
-- runs sql/*.sql only). Runs a statement and shows how it failed (or 'ok').
CREATE FUNCTION try_sql(sql text, OUT code text, OUT message text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    code := 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
END
$$;
