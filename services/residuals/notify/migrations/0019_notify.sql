-- 0019 notify: webhook endpoints, the events they are told about, deliveries, and the
-- vendors' rejected usage (WatchRejections).
--
-- Every source record becomes at most one row of notify_events (event_id is derived from
-- what the record describes, so a re-read or re-published record is the same event) in
-- the transaction that stores the consumer's offsets; the same transaction queues one
-- delivery per matching enabled endpoint. The dispatcher sends each endpoint's pending
-- deliveries in delivery_id order, one at a time (ordered per endpoint), and records the
-- outcome here: nothing is in memory only, so a killed dispatcher re-sends what it had
-- not recorded (at least once; receivers de-duplicate on webhook-id).

CREATE TABLE notify_events (
    sequence    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The webhook-id: "msg_" and 26 base32 characters of SHA-256(type, source identity).
    event_id    text        NOT NULL UNIQUE CHECK (event_id ~ '^msg_[a-z2-7]{26}$'),
    event_type  text        NOT NULL CHECK (event_type ~ '^[a-z]+\.[a-z_]+$'),
    -- Whose it is: endpoints of this vendor, of these talents, and finance/admin get it.
    vendor_id   text        NOT NULL DEFAULT '',
    talent_ids  text[]      NOT NULL DEFAULT '{}',
    -- alert.raised: the alert's Severity number (min_severity filters on it); else 0.
    severity    smallint    NOT NULL DEFAULT 0,
    occurred_at timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- When the usage behind it was published, if known (the delivery-lag metric's origin).
    origin_at   timestamptz,
    -- The JSON body exactly as sent and signed, the same on every attempt.
    body        bytea       NOT NULL
);

CREATE TABLE notify_endpoints (
    endpoint_id     text        PRIMARY KEY CHECK (endpoint_id ~ '^ep_[a-z2-7]{26}$'),
    url             text        NOT NULL CHECK (length(url) BETWEEN 8 AND 2048),
    description     text        NOT NULL DEFAULT '',
    event_types     text[]      NOT NULL DEFAULT '{}',
    min_severity    smallint    NOT NULL DEFAULT 0,
    owner_role      text        NOT NULL CHECK (owner_role IN ('vendor', 'talent', 'finance', 'admin')),
    vendor_id       text        NOT NULL DEFAULT '',
    talent_id       text        NOT NULL DEFAULT '',
    -- The signing secret, sealed (notify/secrets.py); never logged, shown once.
    secret          text        NOT NULL,
    previous_secret text,
    previous_until  timestamptz,
    secret_rotated_at timestamptz,
    state           text        NOT NULL DEFAULT 'enabled' CHECK (state IN ('enabled', 'disabled')),
    disabled_reason text        NOT NULL DEFAULT '',
    disabled_at     timestamptz,
    -- Since when its oldest pending delivery keeps failing (NULL: not failing).
    failing_since   timestamptz,
    created_by      text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- Which dispatcher sends for it, until when (notify/dispatcher.py): one sender per endpoint.
    lease_owner     text,
    lease_until     timestamptz,
    CHECK ((owner_role = 'vendor') = (vendor_id <> '')),
    CHECK ((owner_role = 'talent') = (talent_id <> ''))
);
CREATE INDEX notify_endpoints_vendor_idx ON notify_endpoints (vendor_id) WHERE vendor_id <> '';
CREATE INDEX notify_endpoints_talent_idx ON notify_endpoints (talent_id) WHERE talent_id <> '';

CREATE TABLE notify_deliveries (
    delivery_id     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id     text        NOT NULL REFERENCES notify_endpoints ON DELETE CASCADE,
    event_sequence  bigint      NOT NULL REFERENCES notify_events,
    state           text        NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    first_attempt_at timestamptz,
    last_attempt_at timestamptz,
    last_status     integer     NOT NULL DEFAULT 0,
    last_error      text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    redelivery_of   bigint      REFERENCES notify_deliveries ON DELETE SET NULL
);
-- One delivery of an event per endpoint (a redelivery is a further, explicit one).
CREATE UNIQUE INDEX notify_deliveries_once ON notify_deliveries (endpoint_id, event_sequence)
    WHERE redelivery_of IS NULL;
CREATE INDEX notify_deliveries_pending ON notify_deliveries (endpoint_id, delivery_id)
    WHERE state = 'pending';
CREATE INDEX notify_deliveries_by_endpoint ON notify_deliveries (endpoint_id, delivery_id DESC);

-- A vendor's dead-lettered usage (WatchRejections), one row per dead-letter record.
CREATE TABLE notify_rejections (
    sequence         bigint      PRIMARY KEY,
    vendor_id        text        NOT NULL DEFAULT '',
    event_id         text        NOT NULL DEFAULT '',
    reason           integer     NOT NULL,
    detail           text        NOT NULL DEFAULT '',
    licence_id       text        NOT NULL DEFAULT '',
    received_at      timestamptz,
    source_topic     text        NOT NULL DEFAULT '',
    source_partition integer     NOT NULL DEFAULT 0,
    source_offset    bigint      NOT NULL DEFAULT 0,
    original_bytes   integer     NOT NULL DEFAULT 0,
    original_sha256  text        NOT NULL DEFAULT '',
    message_id       text        NOT NULL DEFAULT '',
    -- The dead-letter record itself: re-reading it stores nothing new. The topic is part
    -- of it: deployments (or tests) with their own topic prefix may share a database.
    dlq_topic        text        NOT NULL,
    dlq_partition    integer     NOT NULL,
    dlq_offset       bigint      NOT NULL,
    stored_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (dlq_topic, dlq_partition, dlq_offset)
);
CREATE INDEX notify_rejections_vendor_idx ON notify_rejections (vendor_id, sequence);
-- Sequences are assigned under pg_advisory_xact_lock, so they commit in order and a
-- WatchRejections cursor never skips a lower one committed later.
CREATE SEQUENCE notify_rejection_seq;

-- Statements already announced (statement.ready), so a restart announces none twice.
CREATE TABLE notify_statements_seen (
    statement_id text        PRIMARY KEY,
    seen_at      timestamptz NOT NULL DEFAULT now()
);

SELECT residuals_grants('notify_events', notify => 'SELECT, INSERT');
SELECT residuals_grants('notify_endpoints', notify => 'SELECT, INSERT, UPDATE, DELETE');
SELECT residuals_grants('notify_deliveries', notify => 'SELECT, INSERT, UPDATE, DELETE');
SELECT residuals_grants('notify_rejections', notify => 'SELECT, INSERT');
SELECT residuals_grants('notify_rejection_seq', notify => 'USAGE');
SELECT residuals_grants('notify_statements_seen', notify => 'SELECT, INSERT');
