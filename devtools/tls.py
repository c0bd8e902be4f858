"""Throwaway TLS certificates made with the ``openssl`` program: a CA and what it signs.

``certificate_authority(base)`` makes a self-signed CA (``ca.crt``, ``ca.key`` in
``base``); ``authority.issue(base, hosts)`` a server certificate it signs whose subject
alternative names are ``hosts`` (IP addresses and DNS names), as ``sslmode=verify-full``
checks them. Keys are EC P-256 (quick to make) and readable by their owner only; nothing
lives longer than two days::

    ca = certificate_authority(tmp_path / "ca")
    server = ca.issue(tmp_path / "server", ("127.0.0.1", "localhost"))
    postgres.cluster(tls=server)      # then sslmode=verify-full&sslrootcert={ca.cert}
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devtools.process import MissingRequirementError

DAYS = "2"
KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _openssl(*args: str) -> None:
    program = shutil.which("openssl")
    if program is None:
        raise MissingRequirementError(
            "no openssl program found; `make test` installs the openssl package"
        )
    result = subprocess.run(
        [program, *args], capture_output=True, text=True, check=False, timeout=60
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed:\n{result.stdout}\n{result.stderr}")


def _alt_name(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"DNS:{host}"
    return f"IP:{host}"


@dataclass(frozen=True)
class ServerCertificate:
    """A certificate and its private key, PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA: ``cert`` is what a client trusts (``sslrootcert``)."""

    cert: Path
    key: Path

    def issue(self, base: Path, hosts: Sequence[str]) -> ServerCertificate:
        """A server certificate for ``hosts`` (its first one is the subject's CN)."""
        base.mkdir(parents=True, exist_ok=True)
        cert, key, request = base / "server.crt", base / "server.key", base / "server.csr"
        extensions = base / "server.ext"
        extensions.write_text(
            "basicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature, keyEncipherment\n"
            "extendedKeyUsage = serverAuth\n"
            f"subjectAltName = {', '.join(_alt_name(h) for h in hosts)}\n",
            encoding="ascii",
        )
        _openssl(
            "req",
            "-new",
            *KEY,
            "-keyout",
            str(key),
            "-out",
            str(request),
            "-subj",
            f"/CN={hosts[0]}",
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            str(request),
            "-CA",
            str(self.cert),
            "-CAkey",
            str(self.key),
            "-CAcreateserial",
            "-days",
            DAYS,
            "-extfile",
            str(extensions),
            "-out",
            str(cert),
        )
        key.chmod(0o600)
        return ServerCertificate(cert, key)


def certificate_authority(base: Path, name: str = "limpeza test CA") -> CertificateAuthority:
    """A new self-signed CA in ``base`` (``ca.crt``, ``ca.key``)."""
    base.mkdir(parents=True, exist_ok=True)
    cert, key = base / "ca.crt", base / "ca.key"
    _openssl(
        "req",
        "-x509",
        *KEY,
        "-keyout",
        str(key),
        "-out",
        str(cert),
        "-days",
        DAYS,
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints = critical, CA:TRUE",
        "-addext",
        "keyUsage = critical, keyCertSign, cRLSign",
    )
    key.chmod(0o600)
    return CertificateAuthority(cert, key)
