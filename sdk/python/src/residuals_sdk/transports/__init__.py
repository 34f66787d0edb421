"""Transports: Kafka (direct to the usage topic) and gRPC (to the ingest gateway)."""
