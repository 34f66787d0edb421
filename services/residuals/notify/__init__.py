"""The notify service: signed webhooks (Standard Webhooks) for alerts, licence changes,
approvals, statements, payouts and rejected usage, and vendors' WatchRejections stream.

Kafka topics and closed statements become rows of ``notify_events`` (intake), each
queued for the endpoints that want it; the dispatcher sends every endpoint's queue in
order, retrying with backoff for more than a day; NotificationService manages endpoints
and deliveries over gRPC.
"""
