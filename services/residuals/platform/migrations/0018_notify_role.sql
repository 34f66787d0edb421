-- 0018 the notify service's role: a seventh service connects as residuals_notify.
--
-- Same rules as 0010: one LOGIN role per service with a database, created only when
-- missing (roles are cluster-wide), no password here. residuals_grants() gains a
-- `notify` argument; PostgreSQL cannot add a parameter in place, so the function is made
-- again with the same body and one more name (earlier calls keep their meaning).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'residuals_notify') THEN
        BEGIN
            CREATE ROLE residuals_notify LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE
                NOREPLICATION NOBYPASSRLS;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- another database's migration created it a moment ago
        END;
    END IF;
END
$$;

DROP FUNCTION residuals_grants(regclass, text, text, text, text, text, text);

CREATE FUNCTION residuals_grants(
    relation  regclass,
    licensing text DEFAULT NULL,
    ingest    text DEFAULT NULL,
    ledger    text DEFAULT NULL,
    payouts   text DEFAULT NULL,
    alerts    text DEFAULT NULL,
    operator  text DEFAULT 'SELECT',
    notify    text DEFAULT NULL
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    object_kind text;
    grant_row   record;
    seq_name    text;
BEGIN
    SELECT CASE relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END INTO object_kind
        FROM pg_class WHERE oid = relation;
    FOR grant_row IN
        SELECT g.service, g.privileges
        FROM (VALUES ('licensing', licensing), ('ingest', ingest), ('ledger', ledger),
                     ('payouts', payouts), ('alerts', alerts), ('operator', operator),
                     ('notify', notify))
             AS g (service, privileges)
        WHERE g.privileges IS NOT NULL
    LOOP
        EXECUTE format('GRANT %s ON %s %s TO %I', grant_row.privileges, object_kind, relation,
                       'residuals_' || grant_row.service);
        CONTINUE WHEN grant_row.privileges !~* '\mINSERT\M';
        FOR seq_name IN
            SELECT pg_get_serial_sequence(relation::text, attname) FROM pg_attribute
            WHERE attrelid = relation AND attnum > 0 AND NOT attisdropped
              AND pg_get_serial_sequence(relation::text, attname) IS NOT NULL
        LOOP
            EXECUTE format('GRANT USAGE ON SEQUENCE %s TO %I', seq_name,
                           'residuals_' || grant_row.service);
        END LOOP;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION residuals_grants(regclass, text, text, text, text, text, text, text)
    FROM PUBLIC;

-- What notify reads of the others: callers' API keys (platform/auth.py through
-- licensing/directory.py) and closed statements (statement.ready, through
-- payouts/directory.py); it stores its offsets with its rows and sets poison records aside
-- like every sink.
SELECT residuals_grants('principals', notify => 'SELECT');
SELECT residuals_grants('api_keys', notify => 'SELECT');
SELECT residuals_grants('statements', notify => 'SELECT (statement_id, period, content_hash, closed_at)');
SELECT residuals_grants('statement_licences', notify => 'SELECT');
SELECT residuals_grants('consumer_offsets', notify => 'SELECT, INSERT, UPDATE');
SELECT residuals_grants('quarantine',
    notify => 'INSERT, SELECT (consumer, source_topic, source_partition, source_offset)');
