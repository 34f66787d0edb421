"""The ingest gateway: signed usage events over gRPC into ``residuals.usage.v1``.

For vendors that cannot reach Kafka. The vendor comes from the API key, every event is
verified (signature, structure, time window, licence identity) and answered per event;
accepted events are written to the usage topic exactly as the SDK's Kafka transport
writes them, rejected ones to the dead-letter topic with the original bytes, and the
answer is sent only after Kafka acknowledged both. See :mod:`.admission` for the checks
and :mod:`.service` for the request-level behaviour.
"""
