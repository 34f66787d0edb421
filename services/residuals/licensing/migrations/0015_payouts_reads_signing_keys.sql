-- 0015 evidence bundles: the payouts service reads the vendors' public signing keys.
--
-- An evidence bundle (residuals/evidence/, PayoutService.ExportEvidence) carries the keys
-- that signed the events behind a statement, so `residuals verify` can check every
-- signature offline. The payouts service reads them through licensing/directory.py
-- (public keys only; nothing else of the registry's credentials).
SELECT residuals_grants('vendor_signing_keys', payouts => 'SELECT');
