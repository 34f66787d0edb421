-- 0016 statement documents: the payouts service reads the names people know each other by.
--
-- A statement document (payouts/documents/, PayoutService.GetStatementDocument) names the
-- payee, the talent, their avatars and the vendors instead of ids, and an agent's document
-- has one section per client (payee_talents). The payouts service reads them through
-- licensing/directory.py; it never writes them.
SELECT residuals_grants('talents', payouts => 'SELECT');
SELECT residuals_grants('avatars', payouts => 'SELECT');
SELECT residuals_grants('vendors', payouts => 'SELECT');
SELECT residuals_grants('payees', payouts => 'SELECT');
SELECT residuals_grants('payee_talents', payouts => 'SELECT');
