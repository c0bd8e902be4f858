"""Property: on random trees and rules, the sweep removes exactly what an oracle says."""

from __future__ import annotations

import os
import tempfile
from fnmatch import fnmatchcase
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleaner import config as config_mod
from cleaner.files import sweep

NOW = 1_800_000_000.0

prefixes = st.sampled_from(["session_", "temp_audio_", "final_", "original_", "x_", ""])
stems = st.text(alphabet="ab1-_.", min_size=0, max_size=4)
suffixes = st.sampled_from([".json", ".wav", ".mp4", ".txt", ""])
names = st.builds(lambda p, s, x: p + s + x, prefixes, stems, suffixes).filter(
    lambda n: n not in ("", ".", "..")
)
kinds = st.sampled_from(["file", "file", "file", "symlink", "dir"])
ages = st.sampled_from([0, 30, 59, 61, 3599, 3601, 86399, 86401, 10 * 86400])
entries = st.dictionaries(names, st.tuples(kinds, ages), max_size=25)
rule_patterns = st.sampled_from(
    ["session_*.json", "temp_audio_*.wav", "final_*.mp4", "*.json", "*_a*", "*"]
)
rule_lists = st.lists(
    st.tuples(rule_patterns, st.sampled_from([0, 60, 3600, 86400])), min_size=1, max_size=3
)
protects = st.lists(st.sampled_from(["original_*", "*.txt", "final_*", "*b*"]), max_size=2)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=entries, rules=rule_lists, protect=protects)
def test_removed_set_equals_the_oracle(
    tree: dict[str, tuple[str, int]], rules: list[tuple[str, int]], protect: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "up"
        root.mkdir()
        outside = Path(tmp) / "outside"
        outside.write_bytes(b"o")
        for name, (kind, age) in tree.items():
            path = root / name
            if kind == "file":
                path.write_bytes(b"x")
            elif kind == "dir":
                path.mkdir()
            else:
                path.symlink_to(outside)
            os.utime(path, (NOW - age, NOW - age), follow_symlinks=False)
        config = config_mod.build(
            {
                "state_file": f"{tmp}/state.json",
                "files": {
                    "directories": [str(root)],
                    "protect": protect,
                    "rules": [
                        {"name": f"r{i}", "pattern": pattern, "max_age": max_age}
                        for i, (pattern, max_age) in enumerate(rules)
                    ],
                },
            },
            env={},
        )

        def oracle(name: str, kind: str, age: int) -> bool:
            if kind != "file" or any(fnmatchcase(name, g) for g in protect):
                return False
            for pattern, max_age in rules:
                if fnmatchcase(name, pattern):  # the first matching rule decides
                    return max_age == 0 or age >= max_age
            return False

        expected = {n for n, (kind, age) in tree.items() if oracle(n, kind, age)}
        sweep(config.files, now=NOW)
        survivors = set(os.listdir(root))
        assert set(tree) - survivors == expected
        assert outside.read_bytes() == b"o"
