"""The payouts service: period close, statements, journal, payouts and reconciliation."""
