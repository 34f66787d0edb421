-- 0020 pre-flight changes: what the CheckUse state cache must forget, as it commits.
--
-- The licensing service answers CheckUse from memory (licensing/preflight_cache.py) and
-- LISTENs for these notifications to drop what changed:
--   residuals_preflight_licences: licence ids whose licence row (its revision, tenants) or
--     running totals (the quota used, and with them the renders of its approvals) changed;
--   residuals_preflight_approvals: approval ids whose approval changed;
--   '*' on either: everything (TRUNCATE).
-- Statement-level triggers: one notification per chunk of ids per statement, so the
-- ledger's batch upsert of running totals pays one aggregate, not one NOTIFY per row.
-- PostgreSQL delivers notifications at commit, in commit order, never for a rollback.

CREATE FUNCTION residuals_preflight_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    chunk text;
BEGIN
    -- TG_ARGV[0]: the channel; TG_ARGV[1]: the changed rows' id column.
    -- A payload is at most 8,000 bytes: ids go in chunks of under 7,000.
    FOR chunk IN EXECUTE format(
        'SELECT string_agg(id, E''\n'') FROM ('
        '  SELECT id, sum(octet_length(id) + 1) OVER (ORDER BY id) / 7000 AS part'
        '  FROM (SELECT DISTINCT %I AS id FROM changed) ids) parts GROUP BY part',
        TG_ARGV[1])
    LOOP
        PERFORM pg_notify(TG_ARGV[0], chunk);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE FUNCTION residuals_preflight_notify_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '*');
    RETURN NULL;
END
$$;

-- A trigger with transition tables takes one event: three per table.
CREATE TRIGGER licences_preflight_inserted AFTER INSERT ON licences
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION residuals_preflight_notify('residuals_preflight_licences', 'licence_id');
CREATE TRIGGER licences_preflight_updated AFTER UPDATE ON licences
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION residuals_preflight_notify('residuals_preflight_licences', 'licence_id');
CREATE TRIGGER licences_preflight_deleted AFTER DELETE ON licences
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION residuals_preflight_notify('residuals_preflight_licences', 'licence_id');
CREATE TRIGGER licences_preflight_truncated AFTER TRUNCATE ON licences
    FOR EACH STATEMENT
    EXECUTE FUNCTION residuals_preflight_notify_all('residuals_preflight_licences');

CREATE TRIGGER ledger_totals_preflight_inserted AFTER INSERT ON ledger_totals
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION residuals_preflight_notify('residuals_preflight_licences', 'licence_id');
CREATE TRIGGER ledger_totals_preflight_updated AFTER UPDATE ON ledger_totals
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION residuals_preflight_notify('residuals_preflight_licences', 'licence_id');
CREATE TRIGGER ledger_totals_preflight_deleted AFTER DELETE ON ledger_totals
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION residuals_preflight_notify('residuals_preflight_licences', 'licence_id');
CREATE TRIGGER ledger_totals_preflight_truncated AFTER TRUNCATE ON ledger_totals
    FOR EACH STATEMENT
    EXECUTE FUNCTION residuals_preflight_notify_all('residuals_preflight_licences');

CREATE TRIGGER approvals_preflight_inserted AFTER INSERT ON approvals
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION residuals_preflight_notify('residuals_preflight_approvals', 'approval_id');
CREATE TRIGGER approvals_preflight_updated AFTER UPDATE ON approvals
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION residuals_preflight_notify('residuals_preflight_approvals', 'approval_id');
CREATE TRIGGER approvals_preflight_deleted AFTER DELETE ON approvals
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION residuals_preflight_notify('residuals_preflight_approvals', 'approval_id');
CREATE TRIGGER approvals_preflight_truncated AFTER TRUNCATE ON approvals
    FOR EACH STATEMENT
    EXECUTE FUNCTION residuals_preflight_notify_all('residuals_preflight_approvals');
