"""The ``--web.config.file`` of the Prometheus exporter-toolkit: TLS and basic auth.

The format is the one every Prometheus exporter reads::

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file
      key_file: server.key
      client_auth_type: NoClientCert # or RequireAndVerifyClientCert, VerifyClientCertIfGiven
      client_ca_file: ca.crt
      min_version: TLS12             # TLS10 .. TLS13
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':')

Every problem is reported with its key path, all at once, like the main configuration.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from cleaner.config import ConfigError

_TLS_KEYS = (
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
)
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CACHE_SIZE = 64


@functools.cache
def _dummy_hash() -> bytes:
    """Checked when the user is unknown, so a wrong name costs as long as a wrong password."""
    return bcrypt.hashpw(b"limpeza-exporter", bcrypt.gensalt(rounds=10))


@dataclass(frozen=True)
class TLSConfig:
    cert_file: Path
    key_file: Path
    client_auth: ssl.VerifyMode = ssl.CERT_NONE
    client_ca_file: Path | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion | None = None

    def context(self) -> ssl.SSLContext:
        """A server-side SSL context; raises OSError or ssl.SSLError on bad files."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = self.min_version
        if self.max_version is not None:
            ctx.maximum_version = self.max_version
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        ctx.verify_mode = self.client_auth
        if self.client_ca_file is not None:
            ctx.load_verify_locations(cafile=str(self.client_ca_file))
        return ctx


@dataclass
class BasicAuth:
    """Checks ``Authorization: Basic`` credentials against bcrypt hashes.

    A bcrypt check costs tens of milliseconds, so credentials that passed are remembered
    (as a SHA-256 of user, password and hash, never in clear) for the next scrapes.
    """

    users: Mapping[str, bytes]
    _verified: dict[bytes, None] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _key(self, user: str, secret: bytes, hashed: bytes) -> bytes:
        return hashlib.sha256(b"\0".join((user.encode("utf-8"), secret, hashed))).digest()

    def remembered(self, header: str | None) -> bool:
        """True when these exact credentials passed a bcrypt check before (no check now).

        The key holds the user, the password and the hash, so a wrong password, or the
        right one after the hash changed, is never taken from here.
        """
        credentials = _credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self.users.get(user)
        if hashed is None:
            return False
        key = self._key(user, password.encode("utf-8"), hashed)
        with self._lock:
            return key in self._verified

    def check(self, user: str, password: str) -> bool:
        hashed = self.users.get(user)
        secret = password.encode("utf-8")
        if hashed is None:
            bcrypt.checkpw(secret, _dummy_hash())
            return False
        key = self._key(user, secret, hashed)
        with self._lock:
            if key in self._verified:
                return True
        try:
            ok = bcrypt.checkpw(secret, hashed)
        except ValueError:
            return False
        if ok:
            with self._lock:
                if len(self._verified) >= _CACHE_SIZE:
                    self._verified.pop(next(iter(self._verified)))
                self._verified[key] = None
        return ok

    def check_header(self, header: str | None) -> bool:
        """True when an ``Authorization`` header carries valid Basic credentials."""
        credentials = _credentials(header)
        return credentials is not None and self.check(*credentials)


def _credentials(header: str | None) -> tuple[str, str] | None:
    """User and password of an ``Authorization: Basic`` header, or None."""
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


@dataclass(frozen=True)
class WebConfig:
    tls: TLSConfig | None = None
    basic_auth: BasicAuth | None = None


def _path(base: Path, raw: object, key: str, problems: list[str]) -> Path | None:
    if not isinstance(raw, str) or not raw:
        problems.append(f"{key}: expected a file path, got {raw!r}")
        return None
    path = Path(raw)
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        problems.append(f"{key}: no such file: {path}")
    return path


def _tls(raw: object, base: Path, problems: list[str]) -> TLSConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.append(f"tls_server_config: expected a mapping, got {raw!r}")
        return None
    for key in raw:
        if key not in _TLS_KEYS:
            problems.append(
                f"tls_server_config.{key}: not supported (supported: {', '.join(_TLS_KEYS)})"
            )
    cert = _path(base, raw.get("cert_file"), "tls_server_config.cert_file", problems)
    key_file = _path(base, raw.get("key_file"), "tls_server_config.key_file", problems)
    auth_name = raw.get("client_auth_type", "NoClientCert")
    client_auth = _CLIENT_AUTH.get(str(auth_name))
    if client_auth is None:
        problems.append(
            f"tls_server_config.client_auth_type: expected one of {', '.join(_CLIENT_AUTH)}, "
            f"got {auth_name!r}"
        )
    client_ca = None
    if raw.get("client_ca_file") is not None:
        client_ca = _path(base, raw["client_ca_file"], "tls_server_config.client_ca_file", problems)
    elif client_auth not in (None, ssl.CERT_NONE):
        problems.append("tls_server_config.client_ca_file: required to verify client certificates")
    versions: dict[str, ssl.TLSVersion | None] = {}
    for name, default in (("min_version", "TLS12"), ("max_version", None)):
        value = raw.get(name, default)
        if value is None:
            versions[name] = None
            continue
        version = _TLS_VERSIONS.get(str(value))
        if version is None:
            problems.append(
                f"tls_server_config.{name}: expected one of {', '.join(_TLS_VERSIONS)}, "
                f"got {value!r}"
            )
        versions[name] = version
    if cert is None or key_file is None or client_auth is None:
        return None
    return TLSConfig(
        cert_file=cert,
        key_file=key_file,
        client_auth=client_auth,
        client_ca_file=client_ca,
        min_version=versions["min_version"] or ssl.TLSVersion.TLSv1_2,
        max_version=versions["max_version"],
    )


#: ``$2y$10$`` and 53 characters: 22 of salt, 31 of hash, in bcrypt's own base64 alphabet.
_BCRYPT = re.compile(r"\$(2[aby])\$([0-9]{2})\$([./A-Za-z0-9]{53})")
_BCRYPT_COSTS = range(4, 32)  # what bcrypt (and exporter-toolkit's bcrypt.Cost) accepts


def bcrypt_problem(hashed: object) -> str | None:
    """Why ``hashed`` is not a bcrypt hash this exporter can check, or None.

    As exporter-toolkit does at load (``bcrypt.Cost``): the format and a cost of 4 to 31.
    A hash that fails here would make every scrape a 401, so it is refused at start. The
    salt is then proven usable by one check at the lowest cost (about a millisecond), not at
    the hash's own cost, which may take seconds. The hash itself is never echoed.
    """
    if not isinstance(hashed, str):
        return f"a string, got {type(hashed).__name__}"
    match = _BCRYPT.fullmatch(hashed)
    if match is None:
        return (
            "$2y$, $2b$ or $2a$, a two-digit cost, $ and 53 characters of [./A-Za-z0-9], "
            f"as `htpasswd -nBC 10 \"\" | tr -d ':'` prints; got {len(hashed)} characters"
            + ("" if hashed.startswith("$2") else " not starting with $2")
        )
    cost = int(match.group(2))
    if cost not in _BCRYPT_COSTS:
        return f"a cost of {_BCRYPT_COSTS.start:02d} to {_BCRYPT_COSTS.stop - 1}, got {cost:02d}"
    cheapest = f"${match.group(1)}${_BCRYPT_COSTS.start:02d}${match.group(3)}"
    try:
        bcrypt.checkpw(b"", cheapest.encode("ascii"))
    except ValueError:
        return "its salt is not valid bcrypt base64 (a character was changed or lost)"
    return None


def _basic_auth(raw: object, problems: list[str]) -> BasicAuth | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.append(f"basic_auth_users: expected a mapping of user to bcrypt hash, got {raw!r}")
        return None
    users: dict[str, bytes] = {}
    for user, hashed in raw.items():
        if not isinstance(user, str) or not user or ":" in user:
            problems.append(f"basic_auth_users.{user}: expected a user name without ':'")
            continue
        problem = bcrypt_problem(hashed)
        if problem is not None or not isinstance(hashed, str):
            problems.append(f"basic_auth_users.{user}: expected a bcrypt hash ({problem})")
            continue
        users[user] = hashed.encode("ascii")
    return BasicAuth(users) if users else None


def parse(raw: object, base: Path, source: str = "") -> WebConfig:
    """Validates a parsed web config; relative file names are taken from ``base``."""
    problems: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"(top): expected a mapping, got {raw!r}"], source)
    known = ("tls_server_config", "basic_auth_users")
    for key in raw:
        if key not in known:
            problems.append(f"{key}: not supported (supported: {', '.join(known)})")
    config = WebConfig(
        tls=_tls(raw.get("tls_server_config"), base, problems),
        basic_auth=_basic_auth(raw.get("basic_auth_users"), problems),
    )
    if config.tls is not None:
        try:
            config.tls.context()
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"tls_server_config: cannot load the certificate or key: {exc}")
    if problems:
        raise ConfigError(problems, source)
    return config


def load(path: Path) -> WebConfig:
    """Reads and validates a web config file; raises ConfigError with every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"(file) cannot read: {exc}"], str(path)) from None
    try:
        raw: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"(yaml) {str(exc).splitlines()[0]}"], str(path)) from None
    return parse(raw, path.parent, str(path))
