"""`make demo`: limpeza end to end on an embedded default, in a temporary directory.

It makes an uploads tree (old and fresh session, audio and final files, plus the users'
originals) and an API job cache with ghosts in it, shows what a dry run would do, runs
the cleaner for real, then starts the exporter and prints what Prometheus would scrape.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

HOUR = 3600.0
DAY = 24 * HOUR

#: name -> age in seconds: what a backend leaves behind after a few days.
TREE = {
    "session_4f1c.json": 3 * DAY,
    "session_9a02.json": 2 * HOUR,
    "temp_audio_4f1c.wav": 30 * HOUR,
    "temp_audio_9a02.wav": 1 * HOUR,
    "final_4f1c.mp4": 5 * DAY,
    "final_9a02.mp4": 10 * 60,
    "original_4f1c.mp4": 9 * DAY,
    "original_9a02.mp4": 2 * HOUR,
    "original_session_export.json": 30 * DAY,
}

#: job id -> (status, minutes since its last update): 9 "active", 4 of them ghosts.
JOBS = {
    "scan-101": ("running", 11),
    "scan-102": ("running", 7),
    "scan-103": ("queued", 6),
    "scan-104": ("queued", 3),
    "scan-105": ("running", 1),
    "scan-106": ("running", 0.5),
    "scan-107": ("queued", 0.2),
    "scan-108": ("running", 2),
    "scan-109": ("queued", 1),
    "scan-090": ("done", 60),
}


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def cleaner(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cleaner", "--config", str(config), *args]
    print("$ limpeza-cleaner --config limpeza.yml " + " ".join(args), flush=True)
    result = subprocess.run(cmd, text=True, capture_output=True, check=False)
    sys.stdout.write(result.stdout)
    for line in result.stderr.splitlines():
        print(f"  (log) {line}")
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build(base: Path) -> Path:
    uploads = base / "uploads"
    uploads.mkdir()
    now = time.time()
    for name, age in TREE.items():
        path = uploads / name
        path.write_bytes(os.urandom(2048 if name.endswith(".mp4") else 256))
        os.utime(path, (now - age, now - age))
    cache = base / "desfollow_jobs.json"
    cache.write_text(
        json.dumps(
            {
                job: {"status": status, "updated_at": now - minutes * 60}
                for job, (status, minutes) in JOBS.items()
            },
            indent=1,
        )
    )
    config = base / "limpeza.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "interval": "30s",
                "state_file": str(base / "state" / "state.json"),
                "audit_log": str(base / "log" / "audit.jsonl"),
                "files": {"directories": [str(uploads)]},
                "jobs": {"cache_file": str(cache)},
            },
            sort_keys=False,
        )
    )
    return config


def listing(uploads: Path) -> list[str]:
    return sorted(p.name for p in uploads.iterdir())


def show_exporter(config: Path, base: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    say(f"The exporter on http://{address}/metrics")
    log = (base / "exporter.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--config", str(config),
         "--web.listen-address", address],
        stdout=log, stderr=log,
    )
    try:
        body = ""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
                    body = reply.read().decode()
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        if not body:
            print("the exporter did not answer; its log:")
            print((base / "exporter.log").read_text())
            return
        wanted = ("limpeza_jobs_active", "limpeza_jobs_stale", "limpeza_jobs{",
                  "limpeza_files_removed_total", "limpeza_bytes_removed_total",
                  "limpeza_jobs_reaped_total", "limpeza_directory_files",
                  "limpeza_filesystem_avail_bytes", "limpeza_last_success")
        for line in body.splitlines():
            if line.startswith(wanted):
                print("  " + line)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="limpeza-demo-"))
    try:
        config = build(base)
        uploads = base / "uploads"
        say(f"An uploads tree in {uploads}")
        now = time.time()
        for name in listing(uploads):
            age = now - (uploads / name).stat().st_mtime
            print(f"  {name:<32} {age / HOUR:6.1f} h old")
        say("What would go (dry run: nothing changes)")
        cleaner(config, "once", "--dry-run")
        say("One sweep for real")
        cleaner(config, "once")
        kept = listing(uploads)
        removed = sorted(set(TREE) - set(kept))
        print("removed: " + ", ".join(removed))
        print("kept:    " + ", ".join(kept))
        assert all(name.startswith("original_") or name in kept for name in TREE if
                   name.startswith("original_")), "an original was removed"
        say("Status")
        cleaner(config, "status")
        show_exporter(config, base)
        say("Audit log (one JSON line per file removed)")
        audit = base / "log" / "audit.jsonl"
        if audit.exists():
            for line in audit.read_text().splitlines():
                print("  " + line)
        print(f"\ndemo done; everything it made was in {base} and is removed now.")
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
