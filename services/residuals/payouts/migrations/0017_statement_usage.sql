-- 0017 statement usage: where each licence's use happened, summed at the close.
--
-- A statement document (payouts/documents/) breaks a payee's part down by day, kind,
-- territory, channel and misuse. Those sums come from the rules' ratings of every use, so
-- a document used to rate the part's events again (as long as the close itself, at a
-- million events). The close rates every use anyway: it now folds each licence's ratings
-- into one tally (payouts/tally.py: sums, held lines, misuse totals and the licence's last
-- 200 misuse; exact amounts as decimal strings) and stores it here with the statement, so
-- a document reads a few rows. Statements closed before this migration have no rows; their
-- documents rate the events again. Immutable like the statement's other rows.
CREATE TABLE statement_usage (
    statement_id text  NOT NULL,
    licence_id   text  NOT NULL,
    tally        jsonb NOT NULL CHECK (jsonb_typeof(tally) = 'object'),
    PRIMARY KEY (statement_id, licence_id),
    FOREIGN KEY (statement_id, licence_id) REFERENCES statement_licences
);

CREATE TRIGGER statement_usage_append_only BEFORE UPDATE OR DELETE ON statement_usage
    FOR EACH ROW EXECUTE FUNCTION residuals_forbid_statement_change();

SELECT residuals_grants('statement_usage', payouts => 'SELECT, INSERT');
