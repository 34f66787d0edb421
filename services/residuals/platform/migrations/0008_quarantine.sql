-- 0008 quarantine: records a consumer could not process, set aside so the line moves on.
--
-- Any consumer (ledger writer, alerts, licence and key readers, relays) that meets a record
-- it cannot process - undecodable, out of bounds, or one that makes its write fail -
-- stores it here with the first error and its position, and carries on with the next
-- record; consumers without a database publish a residuals.v1.QuarantinedRecord to
-- residuals.quarantine.v1, which the ledger writer stores here. Nothing is deleted:
-- `residuals dlq quarantine redrive` produces a record back to its topic after a fix and
-- marks the row. One row per (consumer, position): a re-delivered poison record is one row.

CREATE TABLE quarantine (
    id               bigserial   PRIMARY KEY,
    consumer         text        NOT NULL,
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    record_key       bytea,
    -- NULL: a tombstone (null value).
    record_value     bytea,
    -- The record's headers as a serialized residuals.v1.QuarantinedRecord holding only them
    -- (names and values are arbitrary bytes).
    record_headers   bytea       NOT NULL DEFAULT '\x',
    error            text        NOT NULL,
    quarantined_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    redriven_at      timestamptz,
    redriven_by      text,
    UNIQUE (consumer, source_topic, source_partition, source_offset)
);

CREATE INDEX quarantine_open_idx ON quarantine (quarantined_at) WHERE redriven_at IS NULL;
