"""requirements.lock: pins with the sha256 of their wheels, in pip's --require-hashes format."""

from __future__ import annotations

import re

import pytest

from tools.lock import LOCK, canonical, parse, render, wheel_pin

DIGEST_A = "a" * 64
DIGEST_B = "b" * 64


def test_every_pin_of_the_lock_has_sha256_hashes() -> None:
    pins = parse(LOCK.read_text(encoding="utf-8"))
    assert pins
    for name, version, hashes in pins.values():
        assert hashes, f"{name}=={version} has no --hash"
        assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in hashes), name


def test_the_lock_is_as_make_lock_writes_it() -> None:
    text = LOCK.read_text(encoding="utf-8")
    assert render(parse(text)) == text


def test_a_lock_round_trips() -> None:
    text = f"""\
# a comment
PyYAML==6.0.3 \\
    --hash=sha256:{DIGEST_B} \\
    --hash=sha256:{DIGEST_A}
idna==3.20 --hash=sha256:{DIGEST_A}
requests==2.34.2
"""
    pins = parse(text)
    assert pins == {
        "pyyaml": ("PyYAML", "6.0.3", [DIGEST_B, DIGEST_A]),
        "idna": ("idna", "3.20", [DIGEST_A]),
        "requests": ("requests", "2.34.2", []),
    }
    pins["requests"] = ("requests", "2.34.2", [DIGEST_B, DIGEST_B])
    again = parse(render(pins))
    assert again["pyyaml"] == ("PyYAML", "6.0.3", [DIGEST_A, DIGEST_B])  # sorted
    assert again["requests"] == ("requests", "2.34.2", [DIGEST_B])  # once
    assert again["idna"] == ("idna", "3.20", [DIGEST_A])


@pytest.mark.parametrize(
    "text",
    [
        f"    --hash=sha256:{DIGEST_A}\n",  # a hash of no pin
        f"idna==3.20\n    --hash=sha256:{DIGEST_A}\n",  # the pin's line did not continue
        "idna==3.20 \\\n    --hash=md5:0123\n",  # not a sha256
        "idna==3.20\nIDNA==3.21\n",  # twice, as pip names it
        "idna>=3.20\n",  # not a pin
    ],
)
def test_a_malformed_lock_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"^line \d+: "):
        parse(text)


def test_a_pin_without_hash_is_not_written() -> None:
    with pytest.raises(ValueError, match=r"idna==3\.20 has no hash"):
        render({"idna": ("idna", "3.20", [])})


@pytest.mark.parametrize(
    ("filename", "pin"),
    [
        (
            "charset_normalizer-3.5.2-cp313-cp313-manylinux2014_x86_64.whl",
            ("charset-normalizer", "3.5.2"),
        ),
        ("PyYAML-6.0.3-cp311-cp311-manylinux_2_17_aarch64.whl", ("pyyaml", "6.0.3")),
        ("certifi-2026.10.18-py3-none-any.whl", ("certifi", "2026.10.18")),
    ],
)
def test_a_wheel_names_its_pin(filename: str, pin: tuple[str, str]) -> None:
    assert wheel_pin(filename) == pin


def test_names_compare_as_pip_compares_them() -> None:
    assert canonical("Python_Dotenv") == canonical("python.dotenv") == "python-dotenv"
