-- 0001 foundation: the tables every later migration builds on.

-- Every accepted usage event, exactly once per (vendor, event id): vendors retry, and the
-- primary key is what makes a retried event a no-op instead of a double charge.
-- payload keeps the original protobuf bytes so events can be re-rated after a fix.
CREATE TABLE usage_events (
    vendor_id   text        NOT NULL,
    event_id    text        NOT NULL,
    licence_id  text        NOT NULL,
    kind        text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    payload     bytea       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vendor_id, event_id)
);

-- Rating and payout queries walk one licence's events in time order.
CREATE INDEX usage_events_licence_occurred_idx ON usage_events (licence_id, occurred_at);

-- Kafka positions stored in the same transaction as the rows they produced, so a consumer
-- that crashes between writing and committing resumes exactly where its data ends.
CREATE TABLE consumer_offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL CHECK (partition >= 0),
    next_offset bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
