-- 0010 roles: each service connects as its own role, with rights on its own tables only.
--
-- A compromised or buggy service can then touch only what it owns: the gateway (the
-- service that faces vendors) can read licences and keys but write nothing; the ledger
-- writer cannot change a licence; alerts cannot read statements. Tables stay owned by the
-- migrator (whoever runs `residuals migrate`), so no service role can ALTER or DROP a
-- table or disable the append-only triggers of 0002 and 0005.
--
--   residuals_licensing  residuals_ingest  residuals_ledger  residuals_payouts
--   residuals_alerts     LOGIN roles, one per service with a database (the meter has none)
--   residuals_operator   NOLOGIN group for people: reads everything, marks quarantined
--                        records re-driven; GRANT residuals_operator TO <person>
--
-- Roles are cluster-wide (one cluster may hold several Residuals databases: tests, the
-- demo, several installs) and this file runs once per database, so a role is created only
-- when missing, and a concurrent migration of another database creating it first is fine.
-- Passwords are not set here: `residuals migrate` sets them from
-- DATABASE_ROLE_PASSWORDS_DIR (the Helm chart mounts a Secret there); the local stack
-- authenticates loopback connections without one (trust).
--
-- Grants: one line per table below, through residuals_grants(table, <service> => '<privileges>').
-- A later migration that adds a table adds its line the same way (the function stays).
-- Writes are granted only where the service writes today; cross-service reads are
-- SELECT. residuals.platform.roles names the roles for the code.

DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['residuals_licensing', 'residuals_ingest',
        'residuals_ledger', 'residuals_payouts', 'residuals_alerts'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE'
                               ' NOREPLICATION NOBYPASSRLS', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database's migration created it a moment ago
            END;
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'residuals_operator') THEN
        BEGIN
            CREATE ROLE residuals_operator NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$$;

-- PostgreSQL < 15 lets every role create objects in schema public; nobody but the
-- migrator should (a no-op with a warning where the migrator does not own the schema).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- residuals_grants('<table>', licensing => 'SELECT, INSERT', ingest => 'SELECT', ...):
-- grants each named service's role the privileges on one table, view or sequence; a role
-- that may INSERT also gets the sequences of the table's serial columns.
-- Operators read every table unless a line says otherwise.
CREATE FUNCTION residuals_grants(
    relation  regclass,
    licensing text DEFAULT NULL,
    ingest    text DEFAULT NULL,
    ledger    text DEFAULT NULL,
    payouts   text DEFAULT NULL,
    alerts    text DEFAULT NULL,
    operator  text DEFAULT 'SELECT'
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
                     ('payouts', payouts), ('alerts', alerts), ('operator', operator))
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
REVOKE ALL ON FUNCTION residuals_grants(regclass, text, text, text, text, text, text) FROM PUBLIC;

-- --- licensing (0002): the registry, credentials, outbox ---------------------------------
-- Every gRPC API authenticates callers against api_keys/principals (platform/auth.py);
-- the gateway checks licences and signing keys (ingest/directory.py); the ledger
-- re-verifies stored signatures (ledger/audit.py); the period close prices with the stored
-- licence versions and suspension windows (payouts/adapters.py).
SELECT residuals_grants('talents', licensing => 'SELECT, INSERT');
SELECT residuals_grants('avatars', licensing => 'SELECT, INSERT');
SELECT residuals_grants('vendors', licensing => 'SELECT, INSERT');
SELECT residuals_grants('payees', licensing => 'SELECT, INSERT');
SELECT residuals_grants('payee_talents', licensing => 'SELECT, INSERT');
SELECT residuals_grants('licences', licensing => 'SELECT, INSERT, UPDATE', ingest => 'SELECT', payouts => 'SELECT');
SELECT residuals_grants('licence_versions', licensing => 'SELECT, INSERT', payouts => 'SELECT');
SELECT residuals_grants('licence_splits', licensing => 'SELECT, INSERT', payouts => 'SELECT');
SELECT residuals_grants('licence_suspensions', licensing => 'SELECT, INSERT, UPDATE', payouts => 'SELECT');
SELECT residuals_grants('vendor_signing_keys', licensing => 'SELECT, INSERT, UPDATE', ingest => 'SELECT', ledger => 'SELECT');
SELECT residuals_grants('principals', licensing => 'SELECT, INSERT', ingest => 'SELECT', payouts => 'SELECT', alerts => 'SELECT');
SELECT residuals_grants('api_keys', licensing => 'SELECT, INSERT, UPDATE', ingest => 'SELECT', payouts => 'SELECT', alerts => 'SELECT');
SELECT residuals_grants('outbox', licensing => 'SELECT, INSERT, UPDATE');

-- --- ledger (0001, 0003, 0007): what the ledger writer stores ----------------------------
-- The period close reads the stored events (payouts/adapters.py, ledger/replay.py).
-- closed_periods: the ledger reads it FOR SHARE in every batch, which PostgreSQL allows
-- only with UPDATE on a column; the close (payouts) inserts under LOCK TABLE ... EXCLUSIVE,
-- which needs table-level UPDATE. That write belongs to the ledger's table and is granted
-- to payouts only until the close asks the ledger instead (a later refactor).
SELECT residuals_grants('usage_events', ledger => 'SELECT, INSERT', payouts => 'SELECT');
SELECT residuals_grants('usage_repeats', ledger => 'SELECT, INSERT', payouts => 'SELECT');
SELECT residuals_grants('dead_letters', ledger => 'SELECT, INSERT', payouts => 'SELECT');
SELECT residuals_grants('ledger_totals', ledger => 'SELECT, INSERT, UPDATE');
SELECT residuals_grants('ledger_arrival_seq', ledger => 'USAGE');
SELECT residuals_grants('closed_periods', ledger => 'SELECT, UPDATE (closed_at)', payouts => 'SELECT, INSERT, UPDATE');
-- Offsets stored with the rows they produced: the ledger writer's and the alerts sink's.
SELECT residuals_grants('consumer_offsets', ledger => 'SELECT, INSERT, UPDATE', alerts => 'SELECT, INSERT, UPDATE');

-- --- payouts (0005): statements, journal, payouts -----------------------------------------
-- Statements and the journal are append-only (triggers of 0005); INSERT is all it takes.
SELECT residuals_grants('statements', payouts => 'SELECT, INSERT');
SELECT residuals_grants('statement_licences', payouts => 'SELECT, INSERT');
SELECT residuals_grants('statement_lines', payouts => 'SELECT, INSERT');
SELECT residuals_grants('statement_held', payouts => 'SELECT, INSERT');
SELECT residuals_grants('statement_allocations', payouts => 'SELECT, INSERT');
SELECT residuals_grants('statement_balances', payouts => 'SELECT, INSERT');
SELECT residuals_grants('statement_adjustments', payouts => 'SELECT, INSERT');
SELECT residuals_grants('journal_entries', payouts => 'SELECT, INSERT');
SELECT residuals_grants('journal_postings', payouts => 'SELECT, INSERT');
SELECT residuals_grants('account_balances', payouts => 'SELECT');
SELECT residuals_grants('payouts', payouts => 'SELECT, INSERT, UPDATE');
SELECT residuals_grants('payout_events', payouts => 'SELECT, INSERT, UPDATE');

-- --- alerts (0006) -----------------------------------------------------------------------
SELECT residuals_grants('alerts', alerts => 'SELECT, INSERT, UPDATE');
SELECT residuals_grants('alert_changes', alerts => 'SELECT, INSERT');
SELECT residuals_grants('alert_stream_head', alerts => 'SELECT, UPDATE');
SELECT residuals_grants('alert_resolutions', alerts => 'SELECT, INSERT, UPDATE');
SELECT residuals_grants('held_event_resolutions', alerts => 'SELECT');
SELECT residuals_grants('alert_suspensions', alerts => 'SELECT, INSERT, UPDATE');

-- --- platform ----------------------------------------------------------------------------
-- Every consumer with a database sets poison records aside (platform/quarantine.py), as do
-- the relays (platform/setaside.py) and the period close (payouts/adapters.py); finding
-- a record already there (ON CONFLICT on the position, or a lookup) needs SELECT on the
-- position columns, and only those. Operators list them and mark them re-driven
-- (`residuals dlq`).
SELECT residuals_grants('quarantine',
    licensing => 'INSERT, SELECT (consumer, source_topic, source_partition, source_offset)',
    ledger    => 'INSERT, SELECT (consumer, source_topic, source_partition, source_offset)',
    payouts   => 'INSERT, SELECT (consumer, source_topic, source_partition, source_offset)',
    alerts    => 'INSERT, SELECT (consumer, source_topic, source_partition, source_offset)',
    operator  => 'SELECT, UPDATE (redriven_at, redriven_by)');
-- The migrator owns schema_migrations; operators may read it (the default).
SELECT residuals_grants('schema_migrations');

-- --- audit (0009) -----------------------------------------------------------------------
-- The registry appends (licensing/audit.py; append-only by trigger) and lists it;
-- operators read it (`residuals audit` runs as the owner).
SELECT residuals_grants('audit_log', licensing => 'SELECT, INSERT');
