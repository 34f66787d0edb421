-- 0003 ledger: what the ledger writer stores from residuals.usage.rated.v1 and
-- residuals.usage.dlq.v1, owned by services/residuals/ledger.
--
-- Every record the meter decided is stored exactly once, in arrival order (one sequence
-- for the three tables below), so a period's statement can be recomputed from PostgreSQL
-- alone by the rules (residuals.ledger.replay.load_period_events):
--   usage_events   the first accepted occurrence of each (vendor_id, event_id), with the
--                  signed bytes, signature, parsed fields and the meter's classification;
--   usage_repeats  re-sends of an accepted identity (DUPLICATE, CONFLICT) and re-sent
--                  retractions, one row per source record;
--   dead_letters   records that never entered money, with the reason, one per source record.
-- accepted = ledgered + held + dead + duplicates is reconciled from these rows.

CREATE SEQUENCE ledger_arrival_seq;

-- Periods closed by the period close; an event (or retraction) of a closed period is
-- recorded as an adjustment of the next open period.
CREATE TABLE closed_periods (
    period    text        PRIMARY KEY CHECK (period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    closed_at timestamptz NOT NULL DEFAULT now()
);

-- usage_events (0001) becomes the ledger of accepted identities. Columns are nullable only
-- because rows written before this migration have none; the ledger writer fills them all.
ALTER TABLE usage_events
    ADD COLUMN arrival_seq             bigint      NOT NULL DEFAULT nextval('ledger_arrival_seq'),
    -- Period of the use (a retraction: its original's), and the open period it was
    -- recorded in when that period was already closed.
    ADD COLUMN period                  text,
    ADD COLUMN adjustment_period       text,
    ADD COLUMN signature               bytea,
    ADD COLUMN key_id                  text,
    ADD COLUMN authenticated_vendor_id text,
    ADD COLUMN avatar_id               text,
    ADD COLUMN render_id               text,
    ADD COLUMN category                text,
    ADD COLUMN territory               text,
    ADD COLUMN channel                 text,
    ADD COLUMN quantity                integer,
    ADD COLUMN viewable                boolean,
    ADD COLUMN ivt                     boolean,
    ADD COLUMN ad_revenue              numeric,
    ADD COLUMN ad_revenue_currency     text,
    ADD COLUMN original_event_id       text,
    -- The meter's classification (estimates; statements recompute money by the rules).
    ADD COLUMN outcome                 text CHECK (outcome IN ('ACCEPTED', 'HELD', 'EXCLUDED', 'RETRACTED')),
    ADD COLUMN exclusion               text,
    ADD COLUMN violation               text,
    ADD COLUMN notices                 text[],
    ADD COLUMN units_priced            bigint,
    ADD COLUMN units_held              bigint,
    ADD COLUMN estimated_amount        numeric,
    ADD COLUMN held_amount             numeric,
    ADD COLUMN currency                text,
    ADD COLUMN licence_version         integer,
    ADD COLUMN tier                    integer,
    ADD COLUMN published_at            timestamptz,
    ADD COLUMN rated_at                timestamptz,
    ADD COLUMN ledgered_at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    ADD COLUMN source_topic            text,
    ADD COLUMN source_partition        integer,
    ADD COLUMN source_offset           bigint;

-- One retraction per original: a second one (another event id) is a duplicate.
CREATE UNIQUE INDEX usage_events_one_retraction_idx
    ON usage_events (vendor_id, original_event_id) WHERE kind = 'RETRACTION';
CREATE UNIQUE INDEX usage_events_source_idx
    ON usage_events (source_topic, source_partition, source_offset);
CREATE INDEX usage_events_period_idx ON usage_events (period, arrival_seq);
CREATE INDEX usage_events_adjustment_idx ON usage_events (adjustment_period, arrival_seq)
    WHERE adjustment_period IS NOT NULL;

CREATE TABLE usage_repeats (
    source_topic      text        NOT NULL,
    source_partition  integer     NOT NULL,
    source_offset     bigint      NOT NULL,
    arrival_seq       bigint      NOT NULL DEFAULT nextval('ledger_arrival_seq'),
    vendor_id         text        NOT NULL,
    event_id          text        NOT NULL,
    licence_id        text        NOT NULL,
    kind              text        NOT NULL,
    -- DUPLICATE: same payload (or a second retraction of one original); CONFLICT: a
    -- different payload under an accepted identity (DUPLICATE_CONFLICT).
    outcome           text        NOT NULL CHECK (outcome IN ('DUPLICATE', 'CONFLICT')),
    -- 'meter' when the meter saw the first occurrence, 'ledger' when only the ledger could
    -- (the first occurrence went through another partition).
    decided_by        text        NOT NULL CHECK (decided_by IN ('meter', 'ledger')),
    occurred_at       timestamptz NOT NULL,
    period            text        NOT NULL,
    adjustment_period text,
    payload           bytea       NOT NULL,
    signature         bytea       NOT NULL,
    key_id            text        NOT NULL,
    received_at       timestamptz NOT NULL,
    published_at      timestamptz,
    ledgered_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (source_topic, source_partition, source_offset)
);

CREATE INDEX usage_repeats_identity_idx ON usage_repeats (vendor_id, event_id);
CREATE INDEX usage_repeats_period_idx ON usage_repeats (period, arrival_seq);

CREATE TABLE dead_letters (
    -- The rejected record's position (gateway rejections: the dead-letter record's own).
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    arrival_seq      bigint      NOT NULL DEFAULT nextval('ledger_arrival_seq'),
    reason           text        NOT NULL,
    detail           text        NOT NULL,
    decided_by       text        NOT NULL CHECK (decided_by IN ('meter', 'ledger', 'gateway')),
    vendor_id        text        NOT NULL DEFAULT '',
    event_id         text        NOT NULL DEFAULT '',
    licence_id       text        NOT NULL DEFAULT '',
    -- Period of the event when it could be read, else of its receipt.
    period           text        NOT NULL,
    original         bytea       NOT NULL,
    received_at      timestamptz NOT NULL,
    published_at     timestamptz,
    ledgered_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (source_topic, source_partition, source_offset)
);

CREATE INDEX dead_letters_period_idx ON dead_letters (period, arrival_seq);

-- Running totals for dashboards, per licence, period (the one it was recorded in) and kind,
-- updated in the transaction that inserted the rows they count. Estimates: statements are
-- recomputed from the rows above, never from these.
CREATE TABLE ledger_totals (
    licence_id       text        NOT NULL,
    period           text        NOT NULL,
    kind             text        NOT NULL,
    currency         text        NOT NULL DEFAULT '',
    events           bigint      NOT NULL DEFAULT 0,
    units_priced     bigint      NOT NULL DEFAULT 0,
    units_held       bigint      NOT NULL DEFAULT 0,
    units_excluded   bigint      NOT NULL DEFAULT 0,
    estimated_amount numeric     NOT NULL DEFAULT 0,
    held_amount      numeric     NOT NULL DEFAULT 0,
    duplicates       bigint      NOT NULL DEFAULT 0,
    conflicts        bigint      NOT NULL DEFAULT 0,
    retracted        bigint      NOT NULL DEFAULT 0,
    adjustments      bigint      NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (licence_id, period, kind)
);

-- Fencing for sinks that store their offsets here: a writer that is assigned a partition
-- increments epoch and remembers it; a batch commits only while the row still carries
-- that epoch, so a writer that lost the partition (a zombie) cannot commit anything.
ALTER TABLE consumer_offsets
    ADD COLUMN epoch bigint NOT NULL DEFAULT 0,
    ADD COLUMN owner text   NOT NULL DEFAULT '';
