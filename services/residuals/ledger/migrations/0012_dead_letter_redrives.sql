-- 0012 dead-letter re-drives: `residuals dlq redrive` produces an UNPROCESSABLE dead
-- letter's original record back to residuals.usage.v1 once the meter's defect is fixed,
-- and marks the ledger's row here, so the same dead letter is not re-driven twice by
-- accident (--force overrides). Rows keep counting as the dead letters they were.

ALTER TABLE dead_letters
    ADD COLUMN redriven_at timestamptz,
    ADD COLUMN redriven_by text;
