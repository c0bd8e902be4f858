"""What "stale" means, timestamps of cached jobs, counting, and what reaches a log line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cleaner.config import ConfigError, build
from cleaner.jobs.cache import count_cache
from cleaner.jobs.connection import describe_error, mask_dsn
from cleaner.jobs.staleness import JobCounts, is_stale, parse_timestamp, record_timestamp

STALE_AFTER = {"running": 180.0, "queued": 120.0}
NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_700_000_000, 1_700_000_000.0),
        (1_700_000_000.5, 1_700_000_000.5),
        ("1700000000", 1_700_000_000.0),
        (1_700_000_000_000, 1_700_000_000.0),  # milliseconds
        ("2023-11-14T22:13:20Z", 1_700_000_000.0),
        ("2023-11-14T22:13:20+00:00", 1_700_000_000.0),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000.0),
        ("2023-11-14T22:13:20", 1_700_000_000.0),  # naive, read in the zone given: UTC
        ("2023-11-14 22:13:20.250000", 1_700_000_000.25),
    ],
)
def test_parse_timestamp_reads_epoch_and_iso(value: object, expected: float) -> None:
    assert parse_timestamp(value, UTC) == pytest.approx(expected)


@pytest.mark.parametrize("value", [None, True, "soon", "", -5, float("nan"), [], {"a": 1}])
def test_parse_timestamp_refuses_what_is_not_a_time(value: object) -> None:
    assert parse_timestamp(value, UTC) is None
    assert parse_timestamp(value, None) is None


def test_a_naive_iso_time_is_read_in_the_zone_given() -> None:
    sao_paulo = ZoneInfo("America/Sao_Paulo")  # UTC-3, no DST since 2019
    assert parse_timestamp("2023-11-14T19:13:20", sao_paulo) == pytest.approx(1_700_000_000.0)
    assert parse_timestamp("2023-11-14T22:13:20", UTC) == pytest.approx(1_700_000_000.0)
    # An explicit offset wins over the zone.
    assert parse_timestamp("2023-11-14T22:13:20Z", sao_paulo) == pytest.approx(1_700_000_000.0)
    berlin = ZoneInfo("Europe/Berlin")  # the zone's own DST applies, date by date
    assert parse_timestamp("2023-07-01T12:00:00", berlin) == pytest.approx(
        datetime(2023, 7, 1, 10, tzinfo=UTC).timestamp()
    )
    assert parse_timestamp("2023-01-01T12:00:00", berlin) == pytest.approx(
        datetime(2023, 1, 1, 11, tzinfo=UTC).timestamp()
    )


# What an API under TZ=America/Sao_Paulo writes with datetime.now().isoformat(), then how a
# cleaner on the same host reads it with no zone given (the default, jobs.cache_timezone:
# local): a job updated ten seconds ago must not be stale.
LOCAL_TIME = r"""
import json, sys, time
from datetime import datetime, timedelta
from cleaner.jobs.cache import count_cache
from cleaner.jobs.staleness import parse_timestamp
written = (datetime.now() - timedelta(seconds=10)).isoformat()
record = {"status": "running", "updated_at": written}
counts = count_cache({"a": record}, {"running": 60.0}, time.time())
print(json.dumps({"age": time.time() - parse_timestamp(written, None), "stale": counts.stale}))
"""


@pytest.mark.parametrize("tz", ["America/Sao_Paulo", "Asia/Tokyo", "UTC"])
def test_a_naive_time_is_the_hosts_local_time_by_default(tz: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", LOCAL_TIME],
        env={**os.environ, "TZ": tz},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    seen = json.loads(out)
    assert 9 < seen["age"] < 60  # ten seconds old, whatever the zone
    assert seen["stale"] == {"running": 0}


def test_count_cache_reads_naive_times_in_the_zone_given() -> None:
    # 21:23:20 naive: in UTC 50 minutes before NOW (stale); in Sao Paulo 3 hours later.
    records = {"a": {"status": "running", "updated_at": "2023-11-14T21:23:20"}}
    assert count_cache(records, STALE_AFTER, NOW, zone=UTC).stale == {"running": 1, "queued": 0}
    fresh = count_cache(records, STALE_AFTER, NOW, zone=ZoneInfo("America/Sao_Paulo"))
    assert fresh.stale == {"running": 0, "queued": 0}


def test_record_timestamp_prefers_updated_then_started_then_created() -> None:
    assert record_timestamp({"updated_at": 30, "started_at": 20, "created_at": 10}) == 30
    assert record_timestamp({"started_at": 20, "created_at": 10}) == 20
    assert record_timestamp({"created_at": 10}) == 10
    assert record_timestamp({"updated_at": None, "started_at": 20}) == 20
    assert record_timestamp({"updated_at": "garbage", "created_at": 10}) == 10
    assert record_timestamp({"status": "running"}) is None


def test_is_stale_only_for_active_statuses_past_their_threshold() -> None:
    assert is_stale("running", NOW - 181, STALE_AFTER, NOW)
    assert not is_stale("running", NOW - 180, STALE_AFTER, NOW)  # exactly at the threshold
    assert not is_stale("running", NOW - 179, STALE_AFTER, NOW)
    assert is_stale("queued", NOW - 121, STALE_AFTER, NOW)
    assert not is_stale("queued", NOW - 119, STALE_AFTER, NOW)
    assert not is_stale("done", NOW - 10**6, STALE_AFTER, NOW)
    assert not is_stale("running", None, STALE_AFTER, NOW)


@given(
    status=st.sampled_from(["running", "queued", "done", "error"]),
    age=st.floats(min_value=0, max_value=10**6, allow_nan=False),
)
def test_is_stale_agrees_with_its_definition(status: str, age: float) -> None:
    expected = status in STALE_AFTER and age > STALE_AFTER[status]
    assert is_stale(status, NOW - age, STALE_AFTER, NOW) == expected


def test_count_cache_counts_every_status_and_stale_active_ones() -> None:
    records: dict[str, dict[str, object]] = {
        "a": {"status": "running", "updated_at": NOW - 500},
        "b": {"status": "running", "updated_at": NOW - 5},
        "c": {"status": "queued", "created_at": NOW - 500},
        "d": {"status": "done", "updated_at": NOW - 10**6},
        "e": {"status": "running"},
    }
    counts = count_cache(records, STALE_AFTER, NOW)
    assert counts.by_status == {"running": 3, "queued": 1, "done": 1}
    assert counts.stale == {"running": 1, "queued": 1}
    assert counts.active == 4


def test_count_cache_has_every_active_status_even_when_empty() -> None:
    counts = count_cache({}, STALE_AFTER, NOW)
    assert counts == JobCounts({"running": 0, "queued": 0}, {"running": 0, "queued": 0})
    assert counts.active == 0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("table", "jobs; DROP TABLE x"),
        ("table", 'jobs"; DROP TABLE x; --'),
        ("table", "a.b.c"),
        ("id_column", "id) OR (1=1"),
        ("status_column", "status --"),
        ("timestamp_column", "updated at"),
        ("error_message_column", "msg'"),
    ],
)
def test_hostile_identifiers_are_refused_with_their_key_path(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build({"jobs": {"database": {key: value}}}, env={})
    assert any(p.startswith(f"jobs.database.{key}:") for p in caught.value.problems), (
        caught.value.problems
    )


def test_describe_error_never_shows_the_password() -> None:
    config = build(
        {"jobs": {"database": {}}},
        env={"LIMPEZA_DATABASE_URL": "postgresql://app:Hunter2-secret@db.example:5432/app"},
    )
    assert config.jobs.database is not None
    error = ValueError(
        'invalid dsn: missing "=" after "postgresql://app:Hunter2-secret@db.example:5432/app" '
        "password=Hunter2-secret"
    )
    text = describe_error(error, config.jobs.database)
    assert "Hunter2-secret" not in text
    assert "db.example" in text


def test_describe_error_masks_a_keyword_dsn_password() -> None:
    config = build(
        {"jobs": {"database": {}}},
        env={"LIMPEZA_DATABASE_URL": "host=db user=app password=Hunter2-secret dbname=app"},
    )
    assert config.jobs.database is not None
    text = describe_error(RuntimeError("echo Hunter2-secret back"), config.jobs.database)
    assert "Hunter2-secret" not in text


def test_iso_and_epoch_give_the_same_staleness() -> None:
    moment = datetime.fromtimestamp(NOW - 200, UTC)
    iso = {"status": "running", "updated_at": moment.isoformat()}
    epoch = {"status": "running", "updated_at": NOW - 200}
    assert record_timestamp(iso, UTC) == pytest.approx(record_timestamp(epoch, UTC))


@pytest.mark.parametrize(
    ("dsn", "secret"),
    [
        ("postgresql://app:hunter2@db.example:5432/app", "hunter2"),
        ("host=db user=app password=hunter2 dbname=app", "hunter2"),
        ("host=db password='hunter 2' dbname=app", "hunter 2"),
    ],
)
def test_mask_dsn(dsn: str, secret: str) -> None:
    masked = mask_dsn(dsn)
    assert secret not in masked
    assert "***" in masked
