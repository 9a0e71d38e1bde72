-- bunce 1.1 -> 1.2: hardening. bunce.notify_enqueued is for bunce's own functions only; a
-- bunce_admin role that someone else made is not trusted silently; the API key is removed
-- from per-database and per-role settings, where every role could read it. Dead letters keep
-- Bunce's answer and say what to do about them.
\echo Use "ALTER EXTENSION bunce UPDATE TO '1.2'" to load this file. \quit

-- Called by bunce.retry_dead_letters (SECURITY DEFINER); anyone else could skew the counters.
REVOKE ALL ON FUNCTION bunce.notify_enqueued(bigint) FROM bunce_admin;

-- bunce_admin may read every event. bunce makes it NOLOGIN with no other attribute and no
-- membership of its own (1.0); a role of that name that can log in, has an attribute or is a
-- member of other roles was made by someone else: refuse it. Name its members, direct or
-- not (a WARNING: CREATE EXTENSION hides NOTICEs).
DO $$
DECLARE
    admin pg_catalog.pg_roles;
    members text;
BEGIN
    SELECT * INTO admin FROM pg_catalog.pg_roles WHERE rolname = 'bunce_admin';
    IF admin.rolcanlogin OR admin.rolsuper OR admin.rolcreaterole OR admin.rolcreatedb
       OR admin.rolreplication OR admin.rolbypassrls
       OR EXISTS (SELECT FROM pg_catalog.pg_auth_members WHERE member = admin.oid) THEN
        RAISE EXCEPTION 'role "bunce_admin" has privileges that bunce does not give it'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'bunce grants bunce_admin read access to every event, customer data included; it must be NOLOGIN, without attributes and a member of no role.',
                  HINT = 'ALTER ROLE bunce_admin NOLOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS, revoke its memberships, or drop the role, then retry.';
    END IF;
    WITH RECURSIVE m(oid) AS (
        SELECT a.member FROM pg_catalog.pg_auth_members a WHERE a.roleid = admin.oid
        UNION
        SELECT a.member FROM pg_catalog.pg_auth_members a JOIN m ON a.roleid = m.oid)
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(r.rolname), ', ' ORDER BY r.rolname) INTO members
    FROM m JOIN pg_catalog.pg_roles r ON r.oid = m.oid;
    IF members IS NOT NULL THEN
        RAISE WARNING 'members of role "bunce_admin" can read every bunce event: %', members
            USING HINT = 'Revoke bunce_admin from roles that must not read customer data.';
    END IF;
END
$$;

-- Only the server configuration may hold the key (bunce 1.2 refuses it elsewhere); a value
-- set earlier with ALTER DATABASE/ROLE ... SET is readable by every role in
-- pg_db_role_setting: remove it.
DO $$
DECLARE
    s record;
BEGIN
    FOR s IN
        SELECT d.datname, r.rolname
        FROM pg_catalog.pg_db_role_setting st
        LEFT JOIN pg_catalog.pg_database d ON d.oid = st.setdatabase
        LEFT JOIN pg_catalog.pg_roles r ON r.oid = st.setrole
        WHERE EXISTS (SELECT FROM pg_catalog.unnest(st.setconfig) c WHERE c LIKE 'bunce.api\_key=%')
    LOOP
        IF s.rolname IS NULL THEN
            EXECUTE pg_catalog.format('ALTER DATABASE %I RESET bunce.api_key', s.datname);
        ELSIF s.datname IS NULL THEN
            EXECUTE pg_catalog.format('ALTER ROLE %I RESET bunce.api_key', s.rolname);
        ELSE
            EXECUTE pg_catalog.format('ALTER ROLE %I IN DATABASE %I RESET bunce.api_key', s.rolname, s.datname);
        END IF;
        RAISE WARNING 'removed bunce.api_key from the settings of %',
            pg_catalog.concat_ws(' in ', 'role ' || pg_catalog.quote_ident(s.rolname),
                                 'database ' || pg_catalog.quote_ident(s.datname))
            USING HINT = 'Every role could read it there: rotate the key in Bunce, then set the new one with ALTER SYSTEM or bunce.api_key_file.';
    END LOOP;
END
$$;

-- Bunce's answer body (bounded: 2000 characters), which may say more than its "message";
-- and what an operator should do about each dead letter.
ALTER TABLE bunce.dead_letters ADD COLUMN response text;
ALTER TABLE bunce.dead_letters ADD COLUMN advice text GENERATED ALWAYS AS (
    CASE
        WHEN reason = 'invalid' THEN
            'refused before it was sent (see message): fix the data, then enqueue it again with bunce_trigger(event_id, payload)'
        WHEN reason = 'rejected' AND http_status = 404 THEN
            'Bunce does not know this event id (a live key with a test event, or the reverse?): fix the event or the key, then bunce.retry_dead_letters(ARRAY[id])'
        WHEN reason = 'rejected' THEN
            'Bunce refused this payload (see message and response): fix the data or the event''s parameters in Bunce, then bunce.retry_dead_letters(ARRAY[id])'
        ELSE
            'Bunce could not be reached or kept failing (see message): once bunce.status shows deliveries again, bunce.retry_dead_letters(ARRAY[id])'
    END) STORED;
COMMENT ON COLUMN bunce.dead_letters.response IS 'Bunce''s answer body (at most 2000 characters)';
COMMENT ON COLUMN bunce.dead_letters.advice IS 'what to do about this dead letter';
