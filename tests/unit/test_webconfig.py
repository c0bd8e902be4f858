"""The exporter-toolkit web config: validation with key paths, and basic auth checks."""

from __future__ import annotations

import base64
import ssl
import subprocess
import time
from pathlib import Path

import bcrypt
import pytest

from cleaner.config import ConfigError
from exporter import webconfig

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def hashed() -> str:
    return bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture(scope="module")
def cert_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(base / "server.key"),
            "-out",
            str(base / "server.crt"),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return base / "server.crt", base / "server.key"


def header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_empty_file_is_plain_http_without_auth(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("", encoding="utf-8")
    config = webconfig.load(path)
    assert config.tls is None
    assert config.basic_auth is None


def test_basic_auth_accepts_only_the_right_password(hashed: str) -> None:
    auth = webconfig.parse({"basic_auth_users": {"prometheus": hashed}}, Path("/")).basic_auth
    assert auth is not None
    assert auth.check_header(header("prometheus", PASSWORD))
    assert auth.check_header(header("prometheus", PASSWORD))  # remembered, still true
    assert not auth.check_header(header("prometheus", PASSWORD + "x"))
    assert not auth.check_header(header("someone", PASSWORD))
    assert not auth.check_header(None)
    assert not auth.check_header("Bearer abc")
    assert not auth.check_header("Basic !!!not-base64")
    assert not auth.check_header("Basic " + base64.b64encode(b"no-colon").decode())


def test_tls_paths_are_relative_to_the_web_config(
    tmp_path: Path, cert_pair: tuple[Path, Path]
) -> None:
    cert, key = cert_pair
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "a.crt").write_bytes(cert.read_bytes())
    (tmp_path / "certs" / "a.key").write_bytes(key.read_bytes())
    path = tmp_path / "web.yml"
    path.write_text(
        "tls_server_config:\n  cert_file: certs/a.crt\n  key_file: certs/a.key\n"
        "  min_version: TLS13\n",
        encoding="utf-8",
    )
    config = webconfig.load(path)
    assert config.tls is not None
    assert config.tls.cert_file == tmp_path / "certs" / "a.crt"
    assert config.tls.min_version == ssl.TLSVersion.TLSv1_3
    assert isinstance(config.tls.context(), ssl.SSLContext)


def test_every_problem_is_reported_with_its_key_path(tmp_path: Path) -> None:
    raw = {
        "tls_server_config": {
            "cert_file": "missing.crt",
            "client_auth_type": "Sometimes",
            "min_version": "SSL3",
            "cipher_suites": ["x"],
        },
        "basic_auth_users": {"alice": "plaintext-password", "bo:b": "$2y$10$abc"},
        "http_server_config": {"http2": True},
    }
    with pytest.raises(ConfigError) as caught:
        webconfig.parse(raw, tmp_path, "web.yml")
    problems = "\n".join(caught.value.problems)
    for expected in (
        "tls_server_config.cert_file: no such file",
        "tls_server_config.key_file: expected a file path",
        "tls_server_config.client_auth_type: expected one of",
        "tls_server_config.min_version: expected one of",
        "tls_server_config.cipher_suites: not supported",
        "basic_auth_users.alice: expected a bcrypt hash",
        "basic_auth_users.bo:b: expected a user name",
        "http_server_config: not supported",
    ):
        assert expected in problems, problems
    assert str(caught.value).startswith("web.yml: ")


def test_client_certificates_need_a_ca(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    cert, key = cert_pair
    raw = {
        "tls_server_config": {
            "cert_file": str(cert),
            "key_file": str(key),
            "client_auth_type": "RequireAndVerifyClientCert",
        }
    }
    with pytest.raises(ConfigError, match=r"client_ca_file: required"):
        webconfig.parse(raw, tmp_path)
    raw["tls_server_config"]["client_ca_file"] = str(cert)
    tls = webconfig.parse(raw, tmp_path).tls
    assert tls is not None and tls.client_auth == ssl.CERT_REQUIRED


def test_a_key_that_does_not_match_is_refused(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    cert, _ = cert_pair
    with pytest.raises(ConfigError, match="cannot load the certificate or key"):
        webconfig.parse(
            {"tls_server_config": {"cert_file": str(cert), "key_file": str(cert)}}, tmp_path
        )


def test_yaml_errors_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\(yaml\)"):
        webconfig.load(path)
    with pytest.raises(ConfigError, match=r"\(file\) cannot read"):
        webconfig.load(tmp_path / "absent.yml")


def _with(hashed: str, position: int, char: str) -> str:
    return hashed[:position] + char + hashed[position + 1 :]


def test_malformed_bcrypt_hashes_are_refused_at_load(hashed: str) -> None:
    """exporter-toolkit refuses them at load (bcrypt.Cost); accepted, every scrape is a 401."""
    good = hashed.replace("$2b$", "$2y$")
    bad = {
        "truncated": good[:-1],  # a lost character: bcrypt.checkpw says False, never an error
        "too long": good + "x",
        "cost 03": good.replace("$04$", "$03$"),
        "cost 32": good.replace("$04$", "$32$"),
        "one-digit cost": good.replace("$04$", "$4$"),
        "unknown variant": good.replace("$2y$", "$2q$"),
        "no variant": good.replace("$2y$", "$2$"),
        "not base64": _with(good, 40, "!"),
        "non-canonical salt": _with(good, 28, "/"),  # the 22nd salt character has 2 bits
        "a quoted hash": f"'{good}'",
        "an MD5 crypt": "$apr1$abcdefgh$0123456789abcdefghijkl",
    }
    raw = {"basic_auth_users": {name.replace(" ", "_"): value for name, value in bad.items()}}
    raw["basic_auth_users"]["number"] = 12  # type: ignore[assignment]
    with pytest.raises(ConfigError) as caught:
        webconfig.parse(raw, Path("/"), "web.yml")
    problems = caught.value.problems
    assert len(problems) == len(bad) + 1, "\n".join(problems)
    for name in [*bad, "number"]:
        key = f"basic_auth_users.{name.replace(' ', '_')}: expected a bcrypt hash ("
        assert any(p.startswith(key) for p in problems), (name, problems)
    text = "\n".join(problems)
    assert "a cost of 04 to 31, got 03" in text and "a cost of 04 to 31, got 32" in text
    assert "not valid bcrypt base64" in text
    assert good[7:] not in text, "the hash is echoed"
    accepted = webconfig.parse({"basic_auth_users": {"a": good, "b": hashed}}, Path("/"))
    assert accepted.basic_auth is not None and set(accepted.basic_auth.users) == {"a", "b"}


def test_a_high_cost_is_validated_without_paying_for_it() -> None:
    salt_and_hash = bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=4)).decode()[7:]
    started = time.monotonic()
    webconfig.parse({"basic_auth_users": {"a": f"$2b$31${salt_and_hash}"}}, Path("/"))
    assert time.monotonic() - started < 1.0  # cost 31 would take days


def test_only_credentials_that_passed_are_remembered(hashed: str) -> None:
    """The event loop takes remembered credentials without bcrypt: never a wrong one."""
    auth = webconfig.parse({"basic_auth_users": {"prometheus": hashed}}, Path("/")).basic_auth
    assert auth is not None
    right = header("prometheus", PASSWORD)
    assert not auth.remembered(right)  # not checked yet
    assert not auth.check_header(header("prometheus", PASSWORD + "x"))
    assert not auth.remembered(header("prometheus", PASSWORD + "x"))
    assert auth.check_header(right)
    assert auth.remembered(right)
    for wrong in (
        header("prometheus", PASSWORD + "x"),
        header("prometheus", PASSWORD[:-1]),
        header("someone", PASSWORD),
        None,
        "Basic !!!",
    ):
        assert not auth.remembered(wrong), wrong
