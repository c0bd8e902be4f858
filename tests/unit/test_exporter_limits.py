"""How many connections the exporter serves at once, given its open files limit and its unit."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from exporter.cli import FD_RESERVE, fitting_connections, parser
from exporter.http import Limits
from tests.unit.test_role_templates import _unit as exporter_unit


@pytest.mark.parametrize(
    ("wanted", "nofile", "served"),
    [
        (128, 1024, 128),
        (128, 128 + FD_RESERVE, 128),
        (128, 64, 64 - FD_RESERVE),
        (128, 8, 1),
        (5000, resource.RLIM_INFINITY, 5000),
    ],
)
def test_connections_fit_under_the_open_files_limit(wanted: int, nofile: int, served: int) -> None:
    assert fitting_connections(wanted, nofile) == served


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_max_connections_must_be_a_positive_number(value: str) -> None:
    with pytest.raises(SystemExit) as caught:
        parser().parse_args(["--web.max-connections", value])
    assert caught.value.code == 2


def test_the_unit_leaves_room_for_every_connection(tmp_path: Path) -> None:
    """The unit's LimitNOFILE holds the default connection bound and the exporter's own."""
    [limit] = exporter_unit(tmp_path)["LimitNOFILE"]
    assert fitting_connections(Limits.max_connections, int(limit)) == Limits.max_connections
    assert int(limit) >= 2 * (Limits.max_connections + FD_RESERVE)  # room for a raised bound
