-- 0011 relay set-aside: a row Kafka will never accept stops blocking the rows after it.
--
-- The licensing outbox relay and the payouts relay publish rows in order. A row Kafka
-- refuses whatever is retried (larger than the topic's max.message.bytes, a payload that
-- does not serialize) used to be retried forever, holding back every later row. Now the
-- relay copies it to the quarantine table (consumer licensing-outbox / payouts-relay,
-- source_topic = the topic it was for, source_partition -1, source_offset = the row's id)
-- and sets quarantined_at here, in one transaction; unpublished rows are those with
-- neither published_at nor quarantined_at. `residuals dlq quarantine redrive` produces the
-- stored bytes to that topic once the cause is fixed.

ALTER TABLE outbox ADD COLUMN quarantined_at timestamptz;
ALTER TABLE outbox ADD CONSTRAINT outbox_published_or_set_aside
    CHECK (published_at IS NULL OR quarantined_at IS NULL);
DROP INDEX outbox_unpublished_idx;
CREATE INDEX outbox_unpublished_idx ON outbox (id)
    WHERE published_at IS NULL AND quarantined_at IS NULL;

ALTER TABLE payout_events ADD COLUMN quarantined_at timestamptz;
ALTER TABLE payout_events ADD CONSTRAINT payout_events_published_or_set_aside
    CHECK (published_at IS NULL OR quarantined_at IS NULL);
DROP INDEX payout_events_unpublished_idx;
CREATE INDEX payout_events_unpublished_idx ON payout_events (sequence)
    WHERE published_at IS NULL AND quarantined_at IS NULL;

-- payout_events rows stay immutable except for the relay's published_at and quarantined_at.
CREATE OR REPLACE FUNCTION residuals_payout_events_publish_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       OR (to_jsonb(NEW) - 'published_at' - 'quarantined_at')
          <> (to_jsonb(OLD) - 'published_at' - 'quarantined_at')
    THEN
        RAISE EXCEPTION 'payout_events is append-only: % refused', TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;
