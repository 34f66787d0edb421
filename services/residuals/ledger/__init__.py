"""The ledger writer: rated usage and dead letters into PostgreSQL, exactly once in effect
(``python -m residuals.ledger``)."""
