"""limpeza-cleaner as a real process: the commands, the daemon and its signals, GNU find."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleaner.state import read_state
from tests.fixtures.trees import DAY, Tree, make_file

CLEANER = [sys.executable, "-m", "cleaner"]


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLEANER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else _env(),
    )


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIMPEZA_")}
    env.update(extra)
    return env


def now_tree(tree: Tree) -> None:
    """A tree aged against the real clock (the CLI sweeps at time.time())."""
    now = time.time()
    make_file(tree.uploads / "session_old.json", age=2 * DAY, now=now, data=b"12345")
    make_file(tree.uploads / "session_new.json", age=60, now=now)
    make_file(tree.uploads / "temp_audio_old.wav", age=3 * DAY, now=now)
    make_file(tree.uploads / "final_old.mp4", age=3 * DAY, now=now)
    make_file(tree.uploads / "original_old.mp4", age=30 * DAY, now=now)


def test_once_dry_run_then_once(tree: Tree) -> None:
    now_tree(tree)
    config = tree.write_config()
    dry = run("--config", str(config), "once", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would remove" in dry.stdout and "session_old.json" in dry.stdout
    assert len(tree.names()) == 5
    real = run("--config", str(config), "once", "--json")
    assert real.returncode == 0, real.stderr
    counters = json.loads(real.stdout)
    assert counters["files_removed"] == 3
    block = os.stat(tree.uploads / "session_new.json").st_blocks * 512  # one block a file
    assert counters["rules"]["sessions"] == {"files": 1, "bytes": block, "apparent_bytes": 5}
    assert tree.names() == {"session_new.json", "original_old.mp4"}
    audit = [json.loads(line) for line in (tree.var / "audit.jsonl").read_text().splitlines()]
    assert sorted(a["rule"] for a in audit) == ["final_videos", "sessions", "temp_audio"]
    assert all({"time", "rule", "path", "size", "age"} <= set(a) for a in audit)
    state = read_state(tree.var / "state.json")
    assert state.files_removed == {"sessions": 1, "temp_audio": 1, "final_videos": 1}
    assert state.sweeps == 1 and state.last_success is not None


def test_once_max_age_zero_clears_all_but_originals(tree: Tree) -> None:
    now_tree(tree)
    result = run("--config", str(tree.write_config()), "once", "--max-age", "0")
    assert result.returncode == 0, result.stderr
    assert tree.names() == {"original_old.mp4"}


def test_counters_survive_across_runs(tree: Tree) -> None:
    config = str(tree.write_config())
    for _ in range(2):
        now_tree(tree)
        assert run("--config", config, "once").returncode == 0
    state = read_state(tree.var / "state.json")
    assert state.files_removed["sessions"] == 2
    assert state.sweeps == 2


def test_corrupt_state_file_is_moved_aside(tree: Tree) -> None:
    (tree.var / "state.json").write_text("{not json")
    now_tree(tree)
    result = run("--config", str(tree.write_config()), "once")
    assert result.returncode == 0
    assert "moved to" in result.stderr
    aside = list(tree.var.glob("state.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == "{not json"
    assert read_state(tree.var / "state.json").files_removed["sessions"] == 1


def test_config_from_environment_variable(tree: Tree) -> None:
    now_tree(tree)
    config = tree.write_config()
    result = run("once", "--dry-run", env=_env(LIMPEZA_CONFIG=str(config)))
    assert result.returncode == 0, result.stderr
    assert "session_old.json" in result.stdout


def test_check_config(tree: Tree) -> None:
    good = tree.write_config()
    ok = run("check-config", str(good))
    assert ok.returncode == 0 and "valid" in ok.stdout
    bad = tree.root / "bad.yml"
    bad.write_text("interval: soon\nfiles:\n  rules:\n    - {name: x, pattern: y, max_age: abc}\n")
    result = run("check-config", str(bad))
    assert result.returncode == 2
    assert 'interval: expected a duration such as 24h, got "soon"' in result.stderr
    assert 'files.rules[0].max_age: expected a duration such as 24h, got "abc"' in result.stderr


def test_invalid_config_refuses_every_command(tree: Tree) -> None:
    bad = tree.root / "bad.yml"
    bad.write_text("interval: [\n")
    for command in (["run"], ["once"], ["status"]):
        result = run("--config", str(bad), *command, timeout=20)
        assert result.returncode == 2, command
        assert "invalid configuration" in result.stderr


def test_bad_usage_exits_2(tree: Tree) -> None:
    assert run("--config", str(tree.write_config()), "once", "--max-age", "abc").returncode == 2
    assert run("frobnicate").returncode == 2


@pytest.mark.parametrize("session_id", ["../x", "a/b", "*", "", "x" * 129])
def test_purge_session_refuses_hostile_ids(tree: Tree, session_id: str) -> None:
    tree.file("session_x.json", age=10)
    result = run("--config", str(tree.write_config()), "purge-session", session_id)
    assert result.returncode == 2
    assert "invalid session id" in result.stderr and "nothing removed" in result.stderr
    assert tree.names() == {"session_x.json"}


def test_purge_session(tree: Tree) -> None:
    for name in ("session_s1.json", "temp_audio_s1.wav", "final_s1.mp4"):
        tree.file(name, age=10)
    config = str(tree.write_config())
    dry = run("--config", config, "purge-session", "s1", "--dry-run")
    assert dry.returncode == 0 and len(tree.names()) == 3
    assert run("--config", config, "purge-session", "s1").returncode == 0
    assert tree.names() == {"final_s1.mp4"}
    assert run("--config", config, "purge-session", "s1", "--include-final").returncode == 0
    assert tree.names() == set()


def test_status(tree: Tree) -> None:
    now_tree(tree)
    config = str(tree.write_config())
    report = json.loads(run("--config", config, "status", "--json").stdout)
    per_rule = report["directories"][str(tree.uploads)]
    assert per_rule["sessions"] == {"files": 2, "bytes": 6, "expired": 1, "expired_bytes": 5}
    assert report["last_sweep"]["problem"] == "no sweep recorded yet"
    run("--config", config, "once")
    text = run("--config", config, "status").stdout
    assert "last sweep:" in text and "3 files" in text


def _sweep_as_nobody(config_path: Path) -> dict[str, object]:
    """Runs one sweep in a forked child that dropped to nobody; returns its counters."""
    import pwd

    from cleaner import config as config_mod
    from cleaner.files import sweep

    config = config_mod.load(config_path, {})
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, sweep, report, never return
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            result = sweep(config.files, now=time.time())
            os.write(write_end, json.dumps(result.to_dict()).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(data)  # type: ignore[no-any-return]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to an unprivileged user needs root")
def test_permission_errors_are_counted_and_the_sweep_goes_on() -> None:
    # pytest's own tmp_path sits below a root-only directory: nobody needs its own.
    base = Path(tempfile.mkdtemp(prefix="limpeza-perm-"))
    try:
        _permission_case(Tree(base, base / "uploads", base / "var"))
    finally:
        shutil.rmtree(base)


def _permission_case(tree: Tree) -> None:
    tree.uploads.mkdir()
    tree.var.mkdir()
    now = time.time()
    locked_dir = tree.uploads / "private"
    make_file(locked_dir / "session_hidden.json", age=3 * DAY, now=now)
    make_file(tree.uploads / "session_unreadable.json", age=3 * DAY, now=now).chmod(0)
    make_file(tree.uploads / "temp_audio_ok.wav", age=3 * DAY, now=now)
    config = tree.write_config(
        files={
            "directories": [str(tree.uploads)],
            "rules": [
                {
                    "name": "sessions",
                    "pattern": "session_*.json",
                    "max_age": "1d",
                    "recursive": True,
                },
                {"name": "temp_audio", "pattern": "temp_audio_*.wav", "max_age": "1d"},
            ],
        }
    )
    for path in [tree.root, tree.var, tree.uploads, *tree.uploads.rglob("*")]:
        shutil.chown(path, "nobody")
    locked_dir.chmod(0)
    try:
        counters = _sweep_as_nobody(config)
    finally:
        locked_dir.chmod(0o755)
    assert counters["errors"] == 1  # the unreadable directory
    assert not (tree.uploads / "temp_audio_ok.wav").exists()
    assert not (tree.uploads / "session_unreadable.json").exists()
    assert (locked_dir / "session_hidden.json").exists()


# --------------------------------------------------------------------------- GNU find


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_removed_set_as_gnu_find(tmp_path: Path, seed: int) -> None:
    """`once` removes exactly what `find -maxdepth 1 -type f -name P -mmin +N -delete` does."""
    rng = random.Random(seed)
    rules = [
        ("sessions", "session_*.json", 60),
        ("temp_audio", "temp_audio_*.wav", 120),
        ("final_videos", "final_*.mp4", 24 * 60),
    ]
    now = time.time()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    for i in range(300):
        prefix = rng.choice(["session_", "temp_audio_", "final_", "other_"])
        suffix = rng.choice([".json", ".wav", ".mp4"])
        # Ages keep 5 minutes away from every threshold: find counts whole minutes.
        minutes = rng.choice([1, 30, 55, 65, 115, 125, 24 * 60 - 10, 24 * 60 + 10, 5000])
        make_file(a / f"{prefix}{i}{suffix}", age=minutes * 60, now=now)
    (a / "session_link.json").symlink_to(a / f"{prefix}{i}{suffix}")
    os.utime(a / "session_link.json", (now - 9 * DAY,) * 2, follow_symlinks=False)
    shutil.copytree(a, b, symlinks=True)
    for path in a.iterdir():
        st = path.lstat()
        os.utime(b / path.name, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    config = tmp_path / "limpeza.yml"
    config.write_text(
        json.dumps(
            {
                "state_file": str(tmp_path / "state.json"),
                "audit_log": None,
                "files": {
                    "directories": [str(a)],
                    "protect": [],
                    "rules": [{"name": n, "pattern": p, "max_age": f"{m}m"} for n, p, m in rules],
                },
            }
        )
    )
    result = run("--config", str(config), "once")
    assert result.returncode == 0, result.stderr
    for _name, pattern, minutes in rules:
        subprocess.run(
            [
                "find",
                str(b),
                "-maxdepth",
                "1",
                "-type",
                "f",
                "-name",
                pattern,
                "-mmin",
                f"+{minutes}",
                "-delete",
            ],
            check=True,
        )
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))
    assert len(os.listdir(a)) < 301  # something was removed


# --------------------------------------------------------------------------- the daemon


@pytest.fixture
def daemon(tree: Tree) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    config = tree.write_config()
    log_path = tree.root / "daemon.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [*CLEANER, "--config", str(config), "run"],
            stdout=log_file,
            stderr=log_file,
            text=True,
            env=_env(),
        )
    try:
        yield proc, log_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def wait_for(predicate: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_daemon_sweeps_reloads_and_stops_cleanly(
    tree: Tree, daemon: tuple[subprocess.Popen[str], Path]
) -> None:
    proc, log_path = daemon
    now_tree(tree)
    wait_for(lambda: not (tree.uploads / "session_old.json").exists())
    assert (tree.uploads / "original_old.mp4").exists()

    # SIGHUP with a broken file: logged, old config kept, still sweeping.
    (tree.root / "limpeza.yml").write_text("interval: never\n")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in log_path.read_text())
    assert proc.poll() is None
    make_file(tree.uploads / "session_later.json", age=3 * DAY, now=time.time())
    wait_for(lambda: not (tree.uploads / "session_later.json").exists())

    # SIGHUP with a good file that protects sessions now: takes effect.
    tree.write_config(
        files={"directories": [str(tree.uploads)], "protect": ["original_*", "session_*"]}
    )
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in log_path.read_text())
    make_file(tree.uploads / "session_kept.json", age=3 * DAY, now=time.time())
    sweeps = read_state(tree.var / "state.json").sweeps
    wait_for(lambda: read_state(tree.var / "state.json").sweeps >= sweeps + 2)
    assert (tree.uploads / "session_kept.json").exists()

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    state = read_state(tree.var / "state.json")
    assert state.sweeps >= 3
    assert state.files_removed["sessions"] >= 2
    assert "cleanup done" in log_path.read_text()


def test_once_reaps_stale_jobs_in_the_cache_too(tree: Tree) -> None:
    now = time.time()
    cache = tree.root / "jobs.json"
    jobs = {
        "ghost-run": {"status": "running", "updated_at": now - 600},
        "ghost-queue": {"status": "queued", "started_at": now - 300},
        "alive": {"status": "running", "updated_at": now - 5},
        "done": {"status": "done", "updated_at": now - 9000},
    }
    cache.write_text(json.dumps(jobs))
    config = tree.write_config(jobs={"cache_file": str(cache)})
    dry = run("--config", str(config), "once", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(cache.read_text()) == jobs
    result = run("--config", str(config), "once", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["jobs"]["cache_reaped"] == {"running": 1, "queued": 1}
    assert set(json.loads(cache.read_text())) == {"alive", "done"}
    state = read_state(tree.var / "state.json")
    assert state.jobs_reaped == {"cache": {"running": 1, "queued": 1}}
    assert state.jobs_active == 1
