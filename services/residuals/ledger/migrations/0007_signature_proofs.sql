-- 0007 signature proofs: the stored audit evidence of batch-signed usage events.
--
-- SDK clients may sign a batch of events with ONE Ed25519 signature over the Merkle root
-- of their payloads (RFC 9162); each SignedUsageEvent then carries a BatchProof (leaf
-- index, leaf count, audit path) proving its payload is a leaf of the signed tree. The
-- ledger stored payload, signature and key_id only, so a batch-signed row could not be
-- re-verified from the database. signature_proof keeps the proof next to them
-- (residuals.ledger.audit.stored_envelope rebuilds the envelope from the four columns).
--
-- Only usage_events and usage_repeats store a signature apart from its envelope;
-- dead_letters.original keeps the whole SignedUsageEvent bytes, proof included.
-- Nullable: NULL is a per-event signature. Rows written before this migration are NULL
-- even when they were batch-signed: their proof was not kept and cannot be rebuilt here.

ALTER TABLE usage_events ADD COLUMN signature_proof bytea;
ALTER TABLE usage_repeats ADD COLUMN signature_proof bytea;

COMMENT ON COLUMN usage_events.signature_proof IS
    'The serialized residuals.v1.BatchProof when the vendor signed a batch (signature is then '
    'over the batch''s Merkle root), NULL for a per-event signature (over payload itself).';
COMMENT ON COLUMN usage_repeats.signature_proof IS
    'The serialized residuals.v1.BatchProof when the vendor signed a batch (signature is then '
    'over the batch''s Merkle root), NULL for a per-event signature (over payload itself).';
