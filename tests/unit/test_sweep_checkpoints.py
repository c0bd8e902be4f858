"""A long sweep hands its counters to a checkpoint at most once per second, and what the
checkpoints carried plus what the result still holds is the whole sweep, counted once."""

from __future__ import annotations

from collections.abc import Callable
from itertools import count

from cleaner.daemon import apply_sweep
from cleaner.files import sweep
from cleaner.state import State
from cleaner.sweep_result import SweepResult
from tests.fixtures.trees import DAY, NOW, Tree


def _fake_monotonic(step: float) -> Callable[[], float]:
    ticks = count()
    return lambda: next(ticks) * step


def _tree(tree: Tree, n: int) -> None:
    for i in range(n):
        tree.file(f"session_{i}.json", age=9 * DAY, data=b"x" * (i % 7))
        tree.file(f"temp_audio_{i}.wav", age=9 * DAY)
        (tree.uploads / f"session_link_{i}.json").symlink_to(tree.uploads / "nowhere")


def test_checkpoints_and_the_rest_add_up_to_the_whole_sweep(tree: Tree) -> None:
    _tree(tree, 300)
    slices: list[SweepResult] = []
    result = sweep(
        tree.config().files,
        now=NOW,
        checkpoint=slices.append,
        checkpoint_every=1.0,
        monotonic=_fake_monotonic(0.25),  # a file takes a quarter of a second
    )
    assert result.files_removed == 600
    assert len(slices) > 100  # one about every fourth file
    recorded = State()
    for piece in slices:
        assert piece.errors >= 0 and min(piece.skipped.values()) >= 0
        assert all(t.files >= 0 and t.bytes >= 0 for t in piece.removed.values())
        apply_sweep(recorded, piece)
    apply_sweep(recorded, result.pending())
    whole = State()
    apply_sweep(whole, result)
    expected = {"sessions": 300, "temp_audio": 300, "final_videos": 0}
    assert recorded.files_removed == whole.files_removed == expected
    assert recorded.bytes_removed == whole.bytes_removed
    assert recorded.skipped == whole.skipped and whole.skipped["symlink"] == 300
    assert recorded.directories == whole.directories  # the usage comes with the end only


def test_no_checkpoint_within_a_second(tree: Tree) -> None:
    _tree(tree, 50)
    slices: list[SweepResult] = []
    result = sweep(tree.config().files, now=NOW, checkpoint=slices.append)
    assert slices == []  # a quick sweep: the daemon saves once, at the end of the cycle
    assert result.pending() is result
