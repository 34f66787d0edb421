"""Helpers and fixtures shared by the test tiers and the benchmarks (``bench/``).

Import them as ``tests.support.<module>`` from the repository root (pytest puts the root on
``sys.path``; run benchmarks as ``python -m bench.<name>``)."""
