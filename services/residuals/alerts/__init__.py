"""The alerts service: stores the meter's scope-violation alerts once and serves them.

Kafka ``residuals.alerts.v1`` -> :mod:`~residuals.alerts.consumer` (one PostgreSQL
transaction per batch, offsets included) -> ``alerts`` + ``alert_changes`` (a global
sequence) -> :mod:`~residuals.alerts.feed` (in-memory tail of recent changes) ->
:mod:`~residuals.alerts.servicer` (gRPC ``AlertService``: WatchAlerts, ListAlerts,
AcknowledgeAlert, ResolveAlert). Critical misuse is suspended in the licence registry by
:mod:`~residuals.alerts.suspension`. ``python -m residuals.alerts`` runs it.
"""
