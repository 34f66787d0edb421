"""Helpers and fixtures shared by the test tiers (tests/unit, tests/integration, tests/e2e)
and the benchmarks (bench/): import them as ``tests.support.<module>`` from the repository
root (pytest puts the root on ``sys.path``; run benchmarks as ``python -m bench.<name>``).
Test modules import from here, never from each other.

- fixtures: the local stack (``stack``, ``stack_env``, ``new_topic``), for every test
- builders, strategies, meter_core: licences, events, hypothesis months, meter fakes
- month, month_run: the deterministic month of the benchmarks and metering e2e tests
- alerts, bad_request, ingest, ledger, licensing, metering, payouts, sink, tls: per area
- service_process (``run_service`` on :mod:`residuals.platform.processes`, an OTLP
  collector); smoke_worker and sdk_outage_worker, the worker programs two tests run
- waiting (``wait_until``), observability_catalogue
"""
