-- 0006 alerts: scope-violation alerts, their change stream, resolutions and suspensions.
--
-- Owned by the alerts service (services/residuals/alerts). Other services READ
-- alert_resolutions / held_event_resolutions (statements apply resolutions of held money).

-- One row per alert, its current state. alert_id is deterministic (the meter derives it
-- from the triggering identity and kind), so a re-delivered alert is the same row.
CREATE TABLE alerts (
    alert_id           text        PRIMARY KEY,
    kind               text        NOT NULL,  -- ViolationKind without prefix, e.g. FORBIDDEN_CATEGORY
    severity           smallint    NOT NULL CHECK (severity BETWEEN 0 AND 4),  -- Severity number
    licence_id         text        NOT NULL,
    talent_id          text        NOT NULL,
    vendor_id          text        NOT NULL,
    avatar_id          text        NOT NULL,
    period             text        NOT NULL,
    event_ids          text[]      NOT NULL,
    held_units         bigint      NOT NULL CHECK (held_units >= 0),
    held_amount        numeric     NOT NULL,  -- exact, unrounded, in currency_code
    currency_code      text        NOT NULL,
    state              text        NOT NULL CHECK (state IN ('open', 'acknowledged', 'resolved')),
    resolution         text        CHECK (resolution IN ('settle', 'waive', 'dispute')),
    occurred_at        timestamptz,
    raised_at          timestamptz NOT NULL,
    stored_at          timestamptz NOT NULL DEFAULT now(),
    -- The change that created the alert, and its latest change (both in alert_changes).
    raised_sequence    bigint      NOT NULL UNIQUE,
    sequence           bigint      NOT NULL UNIQUE
);

-- ListAlerts pages newest first inside a tenant.
CREATE INDEX alerts_talent_raised_idx ON alerts (talent_id, raised_sequence DESC);
CREATE INDEX alerts_vendor_raised_idx ON alerts (vendor_id, raised_sequence DESC);
CREATE INDEX alerts_licence_raised_idx ON alerts (licence_id, raised_sequence DESC);

-- Every change of every alert, in one global, gap-free, strictly increasing sequence:
-- the cursor of WatchAlerts. Writers take the alert_stream_head row lock to allocate
-- sequences and hold it until commit, so changes become visible in sequence order and a
-- reader that sees sequence N has seen every change below N (no gaps across resumes).
-- The filter columns are copied as of the change; snapshot is the full residuals.v1.Alert.
CREATE TABLE alert_changes (
    sequence    bigint      PRIMARY KEY,
    alert_id    text        NOT NULL REFERENCES alerts (alert_id),
    change      text        NOT NULL
        CHECK (change IN ('raised', 'acknowledged', 'resolved', 'licence_suspended')),
    kind        text        NOT NULL,
    severity    smallint    NOT NULL,
    state       text        NOT NULL,
    licence_id  text        NOT NULL,
    talent_id   text        NOT NULL,
    vendor_id   text        NOT NULL,
    avatar_id   text        NOT NULL,
    period      text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    -- For 'raised': when the triggering usage was published (latency metrics), if known.
    published_at timestamptz,
    snapshot    bytea       NOT NULL
);

CREATE INDEX alert_changes_talent_idx ON alert_changes (talent_id, sequence);
CREATE INDEX alert_changes_vendor_idx ON alert_changes (vendor_id, sequence);
CREATE INDEX alert_changes_alert_idx ON alert_changes (alert_id, sequence);

-- The last allocated sequence (one row).
CREATE TABLE alert_stream_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    sequence  bigint  NOT NULL CHECK (sequence >= 0)
);
INSERT INTO alert_stream_head (singleton, sequence) VALUES (true, 0);

-- How a person resolved an alert's held money; the statements/payouts service applies it:
--   settle  -> the held use becomes payable at the held price (held_amount, currency_code)
--   waive   -> the held use is voided (never paid)
--   dispute -> it stays held (may later be settled or waived; the row is then updated)
-- One row per alert with its current resolution; updated_at moves on a change from
-- dispute to settle/waive (settle and waive are final).
CREATE TABLE alert_resolutions (
    alert_id      text        PRIMARY KEY REFERENCES alerts (alert_id),
    resolution    text        NOT NULL CHECK (resolution IN ('settle', 'waive', 'dispute')),
    kind          text        NOT NULL,
    licence_id    text        NOT NULL,
    vendor_id     text        NOT NULL,
    talent_id     text        NOT NULL,
    period        text        NOT NULL,
    event_ids     text[]      NOT NULL,
    held_units    bigint      NOT NULL,
    held_amount   numeric     NOT NULL,
    currency_code text        NOT NULL,
    note          text        NOT NULL DEFAULT '',
    resolved_by   text        NOT NULL,
    resolved_at   timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX alert_resolutions_licence_period_idx ON alert_resolutions (licence_id, period);

-- Per held event, the resolution that applies (join on usage_events (vendor_id, event_id)).
CREATE VIEW held_event_resolutions AS
SELECT r.vendor_id, e.event_id, r.alert_id, r.kind, r.licence_id, r.period,
       r.resolution, r.resolved_at, r.updated_at
FROM alert_resolutions r CROSS JOIN LATERAL unnest(r.event_ids) AS e (event_id);

-- Automatic suspensions requested from the licence registry, one per alert (idempotent):
-- inserted with the alert, worked by the suspender until the registry confirms (done) or
-- says the licence opted out with auto_suspend_on_critical false (skipped).
CREATE TABLE alert_suspensions (
    alert_id        text        PRIMARY KEY REFERENCES alerts (alert_id),
    licence_id      text        NOT NULL,
    state           text        NOT NULL CHECK (state IN ('pending', 'done', 'skipped')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text        NOT NULL DEFAULT '',
    suspension_id   text        NOT NULL DEFAULT '',
    suspended_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX alert_suspensions_pending_idx ON alert_suspensions (next_attempt_at)
    WHERE state = 'pending';
