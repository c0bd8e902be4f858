"""How many connections the exporter serves at once, given its open files limit."""

from __future__ import annotations

import resource

import pytest

from exporter.cli import FD_RESERVE, fitting_connections, parser


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
