"""The local development stack: a real Kafka broker and PostgreSQL server as plain processes.

`residuals stack up|status|down|migrate` runs them from ``<repo>/.stack`` without Docker,
so developers and CI test against the same servers production uses.
"""
