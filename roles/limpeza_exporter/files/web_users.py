"""The basic auth users of the exporter's web config, hashed with bcrypt on the target.

Run by the limpeza_exporter role with the Python of the limpeza virtualenv (it has bcrypt and
PyYAML, the exporter's own dependencies), so the controller needs neither:

    python -c "$(cat web_users.py)" hash WEB_CONFIG COST  < {"user": "plaintext", ...}
        prints {"user": "bcrypt hash", ...}: the hash already in WEB_CONFIG for a user when it
        still verifies that user's password (so a second deploy changes nothing), else a new
        one of COST rounds.
    python -c "$(cat web_users.py)" check WEB_CONFIG
        exits 1 with every problem when limpeza-exporter would refuse the file at start.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def existing_hashes(path: Path) -> dict[str, str]:
    """The users and hashes of a web config file; none when it is missing or unreadable."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    users = raw.get("basic_auth_users") if isinstance(raw, dict) else None
    if not isinstance(users, dict):
        return {}
    return {str(u): h for u, h in users.items() if isinstance(h, str)}


def still_verifies(password: str, hashed: str) -> bool:
    import bcrypt

    try:
        return bool(bcrypt.checkpw(password.encode("utf-8"), hashed.encode("ascii")))
    except (ValueError, UnicodeEncodeError):
        return False


def hash_users(passwords: dict[str, str], existing: dict[str, str], cost: int) -> dict[str, str]:
    """A bcrypt hash per user: the existing one while it verifies the password, else new."""
    import bcrypt

    hashes: dict[str, str] = {}
    for user, password in sorted(passwords.items()):
        old = existing.get(user)
        if old is not None and still_verifies(password, old):
            hashes[user] = old
        else:
            salt = bcrypt.gensalt(rounds=cost)
            hashes[user] = bcrypt.hashpw(password.encode("utf-8"), salt).decode("ascii")
    return hashes


def check(path: Path) -> int:
    from cleaner.config import ConfigError
    from exporter import webconfig

    try:
        webconfig.load(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "hash":
        passwords = json.load(sys.stdin)
        if not isinstance(passwords, dict) or not all(
            isinstance(u, str) and isinstance(p, str) for u, p in passwords.items()
        ):
            print("expected a JSON object of user name to password", file=sys.stderr)
            return 2
        hashes = hash_users(passwords, existing_hashes(Path(argv[1])), int(argv[2]))
        json.dump(hashes, sys.stdout, sort_keys=True)
        return 0
    if len(argv) == 2 and argv[0] == "check":
        return check(Path(argv[1]))
    print("usage: hash WEB_CONFIG COST < users.json | check WEB_CONFIG", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
