"""KeptConnection's backoff when the database stays down for a long time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cleaner.config import build
from cleaner.jobs.connection import DatabaseDownError, KeptConnection
from devtools.process import free_port


def test_a_database_down_for_thousands_of_attempts_still_gives_a_clean_error() -> None:
    """2.0 ** 1024 overflows: the exporter tries once per scrape with no backoff, so after
    about four hours of a database down at a 15 s scrape interval every scrape used to die
    with an OverflowError instead of reporting the database down."""
    refused = f"postgresql://limpeza@127.0.0.1:{free_port()}/app"
    config = build({"jobs": {"database": {"connect_timeout": "2s"}}}, env={})
    assert config.jobs.database is not None
    db = replace(config.jobs.database, dsn=refused)
    kept = KeptConnection(db, application_name="test", max_backoff=0, log_changes=False)
    for _ in range(1100):
        with pytest.raises(DatabaseDownError):
            kept.run(lambda conn: None)
    assert kept.up is False
