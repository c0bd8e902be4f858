"""jobs.database.name: the table's identity in the metrics, the same on every host, no secret.

Pure logic: the configuration and the DSN parser. The exporter's use of it against a real
PostgreSQL and Prometheus is tests/integration/test_fleet.py.
"""

from __future__ import annotations

import pytest

from cleaner.config import ConfigError, build
from cleaner.dsn import location

SECRET_DSN = "postgresql://limpeza:s3cr3t-pass@db.internal:6543/app?sslmode=require"


def database_name(database: dict[str, object], dsn: str | None = SECRET_DSN) -> str:
    env = {"LIMPEZA_DATABASE_URL": dsn} if dsn else {}
    config = build({"jobs": {"database": database}}, env=env)
    assert config.jobs.database is not None
    return config.jobs.database.name


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (SECRET_DSN, "db.internal:6543/app"),
        ("host=/var/run/postgresql dbname=app user=u password=pw", "/var/run/postgresql:5432/app"),
        ("postgresql://u:pw@[::1]/app", "[::1]:5432/app"),
        ("postgresql://u:pw@db", "db:5432/"),
        ("dbname=app password=pw", "localhost:5432/app"),
        ("", ""),
        ("postgresql://u:p@ss@db/app", ""),  # malformed: nothing of it
    ],
)
def test_location_is_host_port_and_database_never_a_credential(dsn: str, expected: str) -> None:
    assert location(dsn) == expected
    for secret in ("s3cr3t", "pw", "limpeza", "u:"):
        assert secret not in location(dsn)


def test_the_default_name_is_where_the_dsn_points_and_the_table() -> None:
    assert database_name({"table": "public.jobs"}) == "db.internal:6543/app/public.jobs"
    assert "s3cr3t" not in database_name({})
    assert database_name({}, dsn=None) == "jobs"


def test_a_configured_name_wins() -> None:
    assert database_name({"name": "shop jobs"}) == "shop jobs"


def test_the_name_may_come_from_the_environment() -> None:
    config = build(
        {"jobs": {"database": {}}},
        env={"LIMPEZA_DATABASE_URL": SECRET_DSN, "LIMPEZA_JOBS__DATABASE__NAME": "shop"},
    )
    assert config.jobs.database is not None and config.jobs.database.name == "shop"


@pytest.mark.parametrize("name", ["", " padded", "line\nbreak", "x" * 129, 5])
def test_a_name_that_is_no_fit_label_value_is_refused(name: object) -> None:
    with pytest.raises(ConfigError, match=r"jobs\.database\.name"):
        database_name({"name": name})
