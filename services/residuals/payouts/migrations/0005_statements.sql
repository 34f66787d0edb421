-- 0005 statements and payouts: closed-period statements, the double-entry journal, payouts.
--
-- A closed statement is immutable: the period close writes it once (one row per period,
-- so closing twice cannot add a second), and triggers refuse UPDATE and DELETE. The §10
-- document is kept as its canonical JSON text (the exact bytes content_hash covers) and
-- broken down into rows (licences, lines, held lines, allocations, payee balances) for
-- queries and for reconciliation, which checks that both agree. Corrections of a closed
-- period are adjustment rows of a LATER statement, never edits.
--
-- The journal is append-only double entry: signed postings (debit > 0, credit < 0) that
-- sum to zero per entry, enforced at commit by a deferred constraint trigger, so a
-- transaction cannot leave an unbalanced entry behind however it inserts the rows.

CREATE FUNCTION residuals_forbid_statement_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TABLE statements (
    statement_id     text        PRIMARY KEY CHECK (statement_id <> ''),
    period           text        NOT NULL UNIQUE CHECK (period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    -- SHA-256 of canonical_json: the statement's identity across closes and exports.
    content_hash     text        NOT NULL CHECK (content_hash ~ '^[0-9a-f]{64}$'),
    canonical_json   text        NOT NULL,
    -- SHA-256 of the canonical JSON list of this statement's adjustment lines.
    adjustments_hash text        NOT NULL CHECK (adjustments_hash ~ '^[0-9a-f]{64}$'),
    -- What the rules were given besides events and licences: thresholds, carried_in,
    -- advance per licence, the event cut-off (so the statement can be recomputed exactly).
    inputs           jsonb       NOT NULL,
    event_count      bigint      NOT NULL CHECK (event_count >= 0),
    closed_at        timestamptz NOT NULL DEFAULT now(),
    closed_by        text        NOT NULL
);

CREATE TABLE statement_licences (
    statement_id            text    NOT NULL REFERENCES statements,
    licence_id              text    NOT NULL,
    talent_id               text    NOT NULL,
    vendor_id               text    NOT NULL,
    currency                text    NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    earned                  numeric NOT NULL,
    minimum_guarantee_topup numeric NOT NULL,
    gross                   numeric NOT NULL,
    platform_fee            numeric NOT NULL,
    net                     numeric NOT NULL,
    advance_recouped        numeric NOT NULL,
    vendor_invoice          numeric NOT NULL,
    excluded_duplicates     bigint  NOT NULL DEFAULT 0,
    excluded_ivt            bigint  NOT NULL DEFAULT 0,
    excluded_non_viewable   bigint  NOT NULL DEFAULT 0,
    excluded_retracted      bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (statement_id, licence_id)
);

CREATE INDEX statement_licences_talent_idx ON statement_licences (talent_id);
CREATE INDEX statement_licences_vendor_idx ON statement_licences (vendor_id);

-- Priced lines; ref is the line's identity within its licence (RENDER/v1/tier-1).
CREATE TABLE statement_lines (
    statement_id text    NOT NULL,
    licence_id   text    NOT NULL,
    line_no      integer NOT NULL CHECK (line_no >= 1),
    ref          text    NOT NULL,
    kind         text    NOT NULL CHECK (kind IN ('RENDER', 'VIEW', 'AD_IMPRESSION')),
    version      integer NOT NULL,
    tier         integer,
    channel      text,
    units        bigint  NOT NULL,
    rate         numeric,
    revenue      numeric,
    amount       numeric NOT NULL,
    PRIMARY KEY (statement_id, licence_id, line_no),
    UNIQUE (statement_id, licence_id, ref),
    FOREIGN KEY (statement_id, licence_id) REFERENCES statement_licences
);

CREATE TABLE statement_held (
    statement_id text    NOT NULL,
    licence_id   text    NOT NULL,
    violation    text    NOT NULL,
    kind         text    NOT NULL,
    units        bigint  NOT NULL,
    amount       numeric NOT NULL,
    PRIMARY KEY (statement_id, licence_id, violation, kind),
    FOREIGN KEY (statement_id, licence_id) REFERENCES statement_licences
);

CREATE TABLE statement_allocations (
    statement_id text    NOT NULL,
    licence_id   text    NOT NULL,
    payee_id     text    NOT NULL,
    amount       numeric NOT NULL,
    PRIMARY KEY (statement_id, licence_id, payee_id),
    FOREIGN KEY (statement_id, licence_id) REFERENCES statement_licences
);

CREATE INDEX statement_allocations_payee_idx ON statement_allocations (payee_id);

-- Per payee and currency: what was carried in, earned, made payable or carried forward.
CREATE TABLE statement_balances (
    statement_id    text    NOT NULL REFERENCES statements,
    payee_id        text    NOT NULL,
    currency        text    NOT NULL,
    carried_in      numeric NOT NULL,
    earned          numeric NOT NULL,
    payable         numeric NOT NULL,
    carried_forward numeric NOT NULL,
    PRIMARY KEY (statement_id, payee_id, currency)
);

-- Signed corrections of an earlier, closed period, posted with this statement.
CREATE TABLE statement_adjustments (
    statement_id   text    NOT NULL REFERENCES statements,
    line_no        integer NOT NULL CHECK (line_no >= 1),
    adjusts_period text    NOT NULL,
    licence_id     text    NOT NULL,
    currency       text    NOT NULL,
    section        text    NOT NULL CHECK (section IN ('line', 'held', 'settlement', 'allocation')),
    ref            text    NOT NULL,
    units          bigint  NOT NULL,
    amount         numeric NOT NULL,
    PRIMARY KEY (statement_id, line_no),
    UNIQUE (statement_id, adjusts_period, licence_id, section, ref)
);

CREATE INDEX statement_adjustments_target_idx ON statement_adjustments (adjusts_period);

-- --- journal ------------------------------------------------------------------------------

CREATE TABLE journal_entries (
    entry_id     text        PRIMARY KEY CHECK (entry_id <> ''),
    statement_id text        REFERENCES statements,
    period       text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('statement', 'held', 'advance', 'adjustment',
                                                      'payout_scheduled', 'payout_paid')),
    currency     text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    licence_id   text,
    memo         text        NOT NULL DEFAULT '',
    posted_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX journal_entries_period_idx ON journal_entries (period);

CREATE TABLE journal_postings (
    entry_id text    NOT NULL REFERENCES journal_entries,
    line_no  integer NOT NULL CHECK (line_no >= 1),
    account  text    NOT NULL CHECK (account <> ''),
    amount   numeric NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (entry_id, line_no)
);

CREATE INDEX journal_postings_account_idx ON journal_postings (account);

-- Runs at COMMIT for every entry touched: it must have two or more postings summing to 0.
CREATE FUNCTION residuals_journal_entry_balances() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    total numeric;
    legs  integer;
BEGIN
    SELECT coalesce(sum(amount), 0), count(*) INTO total, legs
        FROM journal_postings WHERE entry_id = NEW.entry_id;
    IF legs < 2 OR total <> 0 THEN
        RAISE EXCEPTION 'journal entry % does not balance: % postings summing to %',
            NEW.entry_id, legs, total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER journal_postings_balance
    AFTER INSERT ON journal_postings DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION residuals_journal_entry_balances();

CREATE CONSTRAINT TRIGGER journal_entries_balance
    AFTER INSERT ON journal_entries DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION residuals_journal_entry_balances();

-- Balances are sums of postings, never stored.
CREATE VIEW account_balances AS
    SELECT p.account, e.currency, sum(p.amount) AS balance, count(*) AS postings
    FROM journal_postings p JOIN journal_entries e USING (entry_id)
    GROUP BY p.account, e.currency;

-- --- payouts ------------------------------------------------------------------------------

CREATE TABLE payouts (
    payout_id       text        PRIMARY KEY,
    idempotency_key text        NOT NULL UNIQUE,
    statement_id    text        NOT NULL REFERENCES statements,
    period          text        NOT NULL,
    payee_id        text        NOT NULL,
    currency        text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount          numeric     NOT NULL CHECK (amount > 0),
    state           text        NOT NULL CHECK (state IN ('PENDING', 'PAID', 'FAILED', 'RETRIED')),
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    failure_reason  text        NOT NULL DEFAULT '',
    rail            text        NOT NULL DEFAULT '',
    rail_reference  text        NOT NULL DEFAULT '',
    sequence        bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    paid_at         timestamptz,
    UNIQUE (period, payee_id, currency),
    CHECK ((state = 'PAID') = (paid_at IS NOT NULL))
);

CREATE INDEX payouts_payee_idx ON payouts (payee_id, period);
CREATE INDEX payouts_state_idx ON payouts (state) WHERE state <> 'PAID';

-- Every payout change, in commit order: the WatchPayouts cursor (sequence) and the
-- outbox of residuals.payouts.v1 (payload = PayoutEvent bytes; published_at set by the
-- relay after Kafka acknowledged the record).
CREATE TABLE payout_events (
    sequence     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payout_id    text        NOT NULL REFERENCES payouts,
    payee_id     text        NOT NULL,
    period       text        NOT NULL,
    state        text        NOT NULL,
    payload      bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at timestamptz
);

CREATE INDEX payout_events_unpublished_idx ON payout_events (sequence) WHERE published_at IS NULL;

-- payout_events rows are immutable except for the relay's published_at.
CREATE FUNCTION residuals_payout_events_publish_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR (to_jsonb(NEW) - 'published_at') <> (to_jsonb(OLD) - 'published_at')
    THEN
        RAISE EXCEPTION 'payout_events is append-only: % refused', TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER payout_events_publish_only
    BEFORE UPDATE OR DELETE ON payout_events
    FOR EACH ROW EXECUTE FUNCTION residuals_payout_events_publish_only();

-- Append-only tables.
CREATE TRIGGER statements_append_only BEFORE UPDATE OR DELETE ON statements
    FOR EACH ROW EXECUTE FUNCTION residuals_forbid_statement_change();
CREATE TRIGGER statement_licences_append_only BEFORE UPDATE OR DELETE ON statement_licences
    FOR EACH ROW EXECUTE FUNCTION residuals_forbid_statement_change();
CREATE TRIGGER statement_lines_append_only BEFORE UPDATE OR DELETE ON statement_lines
    FOR EACH ROW EXECUTE FUNCTION residuals_forbid_statement_change();
CREATE TRIGGER statement_held_append_only BEFORE UPDATE OR DELETE ON statement_held
    FOR EACH ROW EXECUTE FUNCTION residuals_forbid_statement_change();
CREATE TRIGGER statement_allocations_append_only BEFORE UPDATE OR DELETE ON statement_allocations
    FOR EACH ROW EXECUTE FUNCTION residuals_forbid_statement_change();
CREATE TRIGGER statement_balances_append_only BEFORE UPDATE OR DELETE ON statement_balances
    FOR EACH ROW EXECUTE FUNCTION residuals_forbid_statement_change();
CREATE TRIGGER statement_adjustments_append_only BEFORE UPDATE OR DELETE ON statement_adjustments
    FOR EACH ROW EXECUTE FUNCTION residuals_forbid_statement_change();
CREATE TRIGGER journal_entries_append_only BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION residuals_forbid_statement_change();
CREATE TRIGGER journal_postings_append_only BEFORE UPDATE OR DELETE ON journal_postings
    FOR EACH ROW EXECUTE FUNCTION residuals_forbid_statement_change();
