"""Launchers for the real servers: PostgreSQL, Prometheus, Alertmanager, the limpeza processes
(cleaner daemon and exporter) and the nspawn Debian targets.

Shared by the tests (``tests/fixtures`` wraps them in pytest fixtures), the demo
(``tools/demo.py``) and the benchmarks (``bench/``). Not part of the installed bundle.
"""
