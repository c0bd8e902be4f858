"""The database DSN: parsed as libpq parses it, masked for output, secrets scrubbed from text.

A DSN is either a URL (``postgresql://user:password@host:port/dbname?key=value``) or
``key=value`` pairs (``host=db password='with space'``). libpq reads a URL's user info up to
the first ``@`` or ``/``, so a password holding an unencoded ``@`` or ``/`` is split and its
pieces end up in the host, the port or the database name, and from there in libpq's error
messages. ``parse`` reads a DSN the way libpq does, refuses what libpq would misread or
refuse, and says what is wrong without quoting any piece of the user info::

    the URL's user info holds an unencoded '@'; percent-encode it as %40

``mask`` gives the DSN fit for output: a URL's whole user info becomes ``***``
(``postgresql://***@db:5432/app``), a ``password`` value becomes ``***``, and of a
malformed DSN only the parts that were read as a host, a port or a database name remain.
``scrub`` removes the password (raw and decoded) and the user info from any text, libpq's
error messages included. ``mask_url`` masks the user info of any other URL the same way
(the API's health URL, ``http://user:password@host/health``). Nothing here ever raises on
a hostile DSN except ``parse``, whose ``DsnError`` is safe to print.

One module of about 500 lines on purpose: the two forms' readers, the masking of a DSN
they refuse and the scrubbing share one notion of where the secrets are in the text, and
a reader that drifted from the masker would print a piece of a password.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

MASK = "***"
URL_PREFIXES = ("postgresql://", "postgres://")
#: Keys whose values are secrets, in both forms.
SECRET_KEYS = frozenset({"password", "sslpassword"})
#: C's isspace, which libpq uses to split key=value pairs.
_SPACE = " \t\n\r\v\f"
_SCHEME_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9+.-]*)://")
_PORT_RE = re.compile(r"[0-9]{0,5}")
_KEY_RE = re.compile(r"[A-Za-z_]{1,40}")
_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_QUERY_SECRET_RE = re.compile(r"[?&](?:ssl)?password=", re.I)
#: The shortest piece of a secret that ``scrub`` removes on its own; shorter ones would
#: mangle ordinary words and give nothing away.
MIN_PIECE = 3


class DsnError(ValueError):
    """A malformed DSN: the message says what is wrong and never quotes its secrets.

    ``masked`` is the DSN as ``mask`` shows it.
    """

    def __init__(self, problem: str, masked: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.masked = masked


@dataclass(frozen=True)
class Dsn:
    """A DSN libpq reads as it is meant: its form, values, masked text and secrets."""

    text: str
    form: str  # "url" or "keywords"
    #: The values libpq reads (percent-decoded, unquoted), as ``PQconninfoParse`` gives them.
    params: dict[str, str]
    masked: str
    secrets: tuple[str, ...] = field(repr=False)

    def __repr__(self) -> str:
        return f"Dsn({self.masked!r})"


class _MalformedError(Exception):
    def __init__(self, problem: str, part: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        #: Which part of a URL was found wrong: "host" or "path" (or "" for the rest).
        self.part = part


def parse(dsn: str) -> Dsn:
    """Reads ``dsn`` as libpq would; raises ``DsnError`` when libpq would misread or refuse it."""
    match = _SCHEME_RE.match(dsn)
    if match is not None:
        return _parse_url(dsn, match)
    return _parse_keywords(dsn)


def problem(dsn: str) -> str | None:
    """What is wrong with ``dsn`` and how it is shown, in one line; None when it is fine."""
    try:
        parse(dsn)
    except DsnError as exc:
        return f"{exc.problem} (the DSN: {exc.masked})"
    return None


def mask(dsn: str) -> str:
    """``dsn`` fit for a log line: no password, no piece of a URL's user info."""
    try:
        return parse(dsn).masked
    except DsnError as exc:
        return exc.masked


def mask_url(url: str) -> str:
    """``url`` fit for a log line: everything between ``scheme://`` (or the start) and the
    last ``@`` becomes ``***``.

    The last ``@``, not the first: written carelessly, a password may hold an ``@``, a
    ``/`` or a ``#`` that a URL parser takes for the end of the user info, and no piece of
    it may show. A URL with an ``@`` further on (in its path) loses more than its user
    info, never less.
    """
    match = _SCHEME_RE.match(url)
    start = match.end() if match is not None else 0
    at = url.rfind("@", start)
    if at < 0:
        return url
    return url[:start] + MASK + url[at:]


def secrets(dsn: str) -> tuple[str, ...]:
    """The strings ``scrub`` removes for a DSN libpq reads as meant, longest first.

    Each password as written and as decoded, and a URL's whole user info when it holds a
    password. Strings shorter than ``MIN_PIECE`` are left out: libpq never quotes a
    password, and removing every "pw" from a message would garble it. A malformed DSN has
    none: ``scrub`` removes from the text whatever it shares with the DSN's secret part.
    """
    try:
        found = set(parse(dsn).secrets)
    except DsnError:
        return ()
    return tuple(sorted((s for s in found if len(s) >= MIN_PIECE), key=lambda s: (-len(s), s)))


def scrub(text: str, dsn: str | None) -> str:
    """``text`` with the DSN replaced by its masked form and every secret of it by ``***``.

    Of a malformed DSN, where a password may have been cut anywhere and its pieces quoted,
    every run of ``MIN_PIECE`` or more characters that the text shares with the part of
    the DSN a password may be in is masked.
    """
    if not dsn:
        return text
    text = text.replace(dsn, mask(dsn))
    try:
        parse(dsn)
    except DsnError:
        for region in _secret_regions(dsn):
            text = _mask_shared(text, region)
        return text
    for secret in secrets(dsn):
        text = text.replace(secret, MASK)
    return text


# -- URLs ------------------------------------------------------------------------------


def _parse_url(dsn: str, match: re.Match[str]) -> Dsn:
    scheme = match.group(1)
    try:
        if dsn[:1] in _SPACE:
            raise _MalformedError(
                "the DSN starts with whitespace, so libpq would not read it as a URL; remove it"
            )
        if f"{scheme}://" not in URL_PREFIXES:
            raise _MalformedError(
                f"a URL DSN must start with postgresql:// or postgres://, not {scheme}://"
            )
        try:
            return _read_url(dsn, len(scheme) + 3)
        except _MalformedError as exc:
            # A host or a database name that makes no sense, and an '@' after them: the
            # user info holds an '@' or a '/' that libpq cut it at.
            rest = dsn[len(scheme) + 3 :]
            held = "".join(c for c in "@/" if c in rest[: rest.rfind("@")])
            if exc.part and "@" in rest and held:
                raise _MalformedError(_unencoded(held)) from None
            raise
    except _MalformedError as exc:
        raise DsnError(exc.problem, _mask_malformed_url(dsn, match.end())) from None


def _read_url(dsn: str, start: int) -> Dsn:
    rest = dsn[start:]
    params: dict[str, str] = {}
    secret_list: list[str] = []
    # libpq: the user info ends at the first '@', if one comes before the first '/'.
    cut = _first_of(rest, "@/")
    if cut < len(rest) and rest[cut] == "@":
        userinfo, after = rest[:cut], cut + 1
    else:
        userinfo, after = None, 0
    tail = rest[after:]
    host_end = _first_of(tail, "/?")
    hostspec, remainder = tail[:host_end], tail[host_end:]
    if "@" in hostspec:
        raise _MalformedError(_unencoded("@"), "host")  # a second '@' after the user info
    if userinfo is not None:
        if _PERCENT_RE.search(userinfo):
            raise _MalformedError(
                "the URL's user info holds a '%' not followed by two hex digits; "
                "percent-encode '%' itself as %25"
            )
        if "%00" in userinfo:
            raise _MalformedError("the URL's user info holds %00, which libpq refuses")
        user, colon, password = userinfo.partition(":")
        if user:
            params["user"] = _decode(user)
        if colon and password:
            params["password"] = _decode(password)
            secret_list += [password, params["password"], userinfo]
    hosts, ports = _read_hostspec(hostspec)
    if hosts:
        params["host"] = hosts
    if ports:
        params["port"] = ports
    query = ""
    if remainder.startswith("/"):
        path, _, query = remainder[1:].partition("?")
        if "@" in path:
            raise _MalformedError(_unencoded("@" if userinfo is not None else "/"), "path")
        if "/" in path:
            raise _MalformedError(
                "the URL's database name holds a '/'; percent-encode it as %2F", "path"
            )
        _check_percent(path, "the URL's database name", "path")
        if path:
            params["dbname"] = _decode(path)
    elif remainder.startswith("?"):
        query = remainder[1:]
    spans = _read_query(query, params, secret_list)
    masked = dsn[:start] + (MASK + "@" if userinfo is not None else "")
    masked += tail[: len(tail) - len(query)] + _mask_spans(query, spans)
    return Dsn(dsn, "url", params, masked, tuple(secret_list))


def _unencoded(chars: str) -> str:
    codes = {"@": "%40", "/": "%2F"}
    if len(chars) == 1:
        return (
            f"the URL's user info holds an unencoded '{chars}'; percent-encode it as {codes[chars]}"
        )
    return "the URL's user info holds an unencoded '@' and '/'; percent-encode them as %40 and %2F"


def _first_of(text: str, chars: str) -> int:
    found = [i for i in (text.find(c) for c in chars) if i >= 0]
    return min(found) if found else len(text)


def _read_hostspec(hostspec: str) -> tuple[str, str]:
    """``host[:port][,host[:port]...]`` as libpq joins them: ("h1,h2", "5432,")."""
    hosts: list[str] = []
    ports: list[str] = []
    for entry in hostspec.split(","):
        if entry.startswith("["):
            close = entry.find("]")
            if close < 0:
                raise _MalformedError("the URL's host part has a '[' without its ']'", "host")
            if close == 1:
                raise _MalformedError("the URL's host part has an empty IPv6 address '[]'", "host")
            host, after = entry[1:close], entry[close + 1 :]
            if after and not after.startswith(":"):
                raise _MalformedError(
                    "the URL's host part has something other than ':' after ']'", "host"
                )
            port = after[1:] if after else None
        else:
            host, colon, port_text = entry.partition(":")
            port = port_text if colon else None
        if any(c in _SPACE or c in "[]" for c in host):
            raise _MalformedError(
                "the URL's host part is not HOST[:PORT][,HOST[:PORT]...] "
                "(a space or a bracket in a host name)",
                "host",
            )
        _check_percent(host, "the URL's host part", "host")
        if port is not None and (not _PORT_RE.fullmatch(port) or int(port or 0) > 65535):
            raise _MalformedError(
                "the URL's port is not a number from 1 to 65535 (if a password comes "
                "before the host, the user info must end with an '@')",
                "host",
            )
        hosts.append(_decode(host))
        ports.append(port or "")
    return ",".join(hosts), ",".join(ports)


def _read_query(query: str, params: dict[str, str], secret_list: list[str]) -> list[range]:
    """Reads ``key=value&...`` into ``params``; returns the spans of secret values."""
    spans: list[range] = []
    position = 0
    after_secret = False
    # libpq allows one '&' at the end, not an empty parameter elsewhere.
    items = query.removesuffix("&").split("&") if query else []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or "=" in value:
            raise _MalformedError(
                _after_secret("the URL's query", "a parameter")
                if after_secret
                else "the URL's query has a parameter without exactly one '=' (key=value&...)"
            )
        _check_percent(item, "the URL's query")
        name, text = _decode(key), _decode(value)
        if name == "ssl" and text == "true":
            name, text = "sslmode", "require"
        elif not _known_key(name):
            raise _MalformedError(
                _after_secret("the URL's query", "an unknown parameter")
                if after_secret
                else f"the URL's query names an unknown parameter {_show_key(name)}"
            )
        params[name] = text
        after_secret = name in SECRET_KEYS
        if after_secret:
            start = position + len(key) + 1
            spans.append(range(start, start + len(value)))
            secret_list += [value, text]
        position += len(item) + 1
    return spans


def _after_secret(where: str, what: str) -> str:
    return (
        f"{where} has {what} right after a password: if the password holds a '&', a '=' "
        "or a space, percent-encode them (%26, %3D, %20)"
    )


def _check_percent(text: str, where: str, part: str = "") -> None:
    if _PERCENT_RE.search(text):
        raise _MalformedError(
            f"{where} holds a '%' not followed by two hex digits; encode '%' itself as %25",
            part,
        )
    if "%00" in text:
        raise _MalformedError(f"{where} holds %00, which libpq refuses", part)


def _decode(text: str) -> str:
    return unquote_to_bytes(text).decode("utf-8", "replace")


def _mask_malformed_url(dsn: str, start: int) -> str:
    """A malformed URL with its user info masked and only well-formed parts kept."""
    head, rest = dsn[:start].strip(), dsn[start:]
    at = rest.rfind("@")
    if at >= 0:
        if _QUERY_SECRET_RE.search(rest[:at]):
            return head + MASK  # the '@' may be inside a password=... parameter
        head, rest = head + MASK + "@", rest[at + 1 :]
    host_end = _first_of(rest, "/?")
    hostspec, remainder = rest[:host_end], rest[host_end:]
    try:
        _read_hostspec(hostspec)
    except _MalformedError:
        hostspec = MASK
    path, mark, query = remainder.partition("?")
    if path and ("/" in path[1:] or "@" in path or _PERCENT_RE.search(path)):
        path = "/" + MASK
    if query:
        try:
            spans = _read_query(query, {}, [])
        except _MalformedError:
            query = MASK
        else:
            query = _mask_spans(query, spans)
    return head + hostspec + path + mark + query


def _secret_regions(dsn: str) -> list[str]:
    """For a malformed DSN, where a password may have been cut anywhere: the text it may
    be in. A URL's user info up to the last '@' after the user name (without an '@', the
    host part after its first ':'), the text after each ``password=``, or the whole DSN when
    it is a single word."""
    regions: list[str] = []
    match = _SCHEME_RE.match(dsn)
    if match is not None:
        rest = dsn[match.end() :]
        at = rest.rfind("@")
        if at >= 0:
            user, colon, password = rest[:at].partition(":")
            regions.append(password if colon else user)
        else:
            regions.append(rest[: _first_of(rest, "/?")].partition(":")[2])
        for secret_key in SECRET_KEYS:
            regions += re.findall(rf"(?i)(?:[?&]){secret_key}=(.*)", rest)
    else:
        for secret_key in SECRET_KEYS:
            regions += re.findall(rf"(?i)\b{secret_key}\s*=\s*(.*)", dsn, flags=re.S)
        if "=" not in dsn:
            regions.append(dsn.strip())
    return [r for r in regions if len(r) >= MIN_PIECE]


def _mask_shared(text: str, region: str) -> str:
    """``text`` with every run of ``MIN_PIECE`` or more characters found in ``region``
    replaced by ``***``, longest runs first from the left."""
    out: list[str] = []
    i = 0
    while i < len(text):
        length = 0
        while i + length < len(text) and text[i : i + length + 1] in region:
            length += 1
        if length >= MIN_PIECE:
            out.append(MASK)
            i += length
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


# -- key=value pairs -------------------------------------------------------------------


def _parse_keywords(dsn: str) -> Dsn:
    params: dict[str, str] = {}
    secret_list: list[str] = []
    spans: list[range] = []
    i, n = 0, len(dsn)
    after_secret = False
    previous = ""
    while True:
        while i < n and dsn[i] in _SPACE:
            i += 1
        if i >= n:
            break
        word_start = i
        try:
            while i < n and dsn[i] != "=" and dsn[i] not in _SPACE:
                i += 1
            key = dsn[word_start:i]
            while i < n and dsn[i] in _SPACE:
                i += 1
            if i >= n or dsn[i] != "=":
                # The word itself is never shown: it may be a piece of a password.
                raise _MalformedError(
                    _keyword_after_secret("a word without '='")
                    if after_secret
                    else f"a word without '=' after the value of {_show_key(previous)} "
                    "(key=value pairs; quote a value holding a space: key='a b')"
                    if previous
                    else "neither a postgresql:// URL nor key=value pairs (host=db user=app ...)"
                )
            i += 1
            while i < n and dsn[i] in _SPACE:
                i += 1
            value_start = i
            chars: list[str] = []
            if i < n and dsn[i] == "'":
                i += 1
                while True:
                    if i >= n:
                        raise _MalformedError(
                            _keyword_after_secret("an unterminated quoted value")
                            if after_secret
                            else f"the value of {_show_key(key)} has a ' without its closing '"
                        )
                    if dsn[i] == "\\":
                        i += 1
                        if i < n:
                            chars.append(dsn[i])
                            i += 1
                    elif dsn[i] == "'":
                        i += 1
                        break
                    else:
                        chars.append(dsn[i])
                        i += 1
            else:
                while i < n and dsn[i] not in _SPACE:
                    if dsn[i] == "\\":
                        i += 1
                        if i < n:
                            chars.append(dsn[i])
                            i += 1
                    else:
                        chars.append(dsn[i])
                        i += 1
            if not _known_key(key):
                raise _MalformedError(
                    _keyword_after_secret("an unknown key")
                    if after_secret
                    else f"unknown key {_show_key(key)}"
                )
        except _MalformedError as exc:
            masked = _mask_spans(dsn[:word_start], spans).rstrip(_SPACE)
            raise DsnError(exc.problem, f"{masked} ..." if masked else "...") from None
        value = "".join(chars)
        params[key] = value
        previous = key
        after_secret = key in SECRET_KEYS
        if after_secret:
            spans.append(range(value_start, i))
            secret_list += [dsn[value_start:i], value]
    return Dsn(dsn, "keywords", params, _mask_spans(dsn, spans), tuple(secret_list))


def _keyword_after_secret(what: str) -> str:
    return (
        f"{what} right after a password's value: if the password holds a space, quote it "
        "(password='...', with \\' for a quote and \\\\ for a backslash)"
    )


def _show_key(key: str) -> str:
    return f"'{key}'" if _KEY_RE.fullmatch(key) else "a key with odd characters"


@functools.cache
def _known_key(key: str) -> bool:
    """Whether the libpq in use knows ``key`` (asked with a harmless ``key=x``)."""
    if not _KEY_RE.fullmatch(key) or key == "ssl":
        return False
    import psycopg2.extensions

    try:
        psycopg2.extensions.parse_dsn(f"{key}=x")
    except psycopg2.ProgrammingError:
        return False
    return True


def _mask_spans(text: str, spans: list[range]) -> str:
    for span in sorted(spans, key=lambda r: r.start, reverse=True):
        text = text[: span.start] + MASK + text[span.stop :]
    return text


def location(dsn: str | None) -> str:
    """Where a DSN points, without any credential: ``host:port/dbname``.

    The host is ``host`` (or ``hostaddr``) as written, a socket directory included; the
    port is 5432 when not given; the database is empty when not given (libpq would take the
    user name, which is left out). An absent or malformed DSN gives ``""``. Never the user,
    the password or any other parameter.
    """
    if not dsn:
        return ""
    try:
        params = parse(dsn).params
    except DsnError:
        return ""
    host = params.get("host") or params.get("hostaddr") or "localhost"
    if ":" in host and not host.startswith("/") and "," not in host:
        host = f"[{host}]"  # an IPv6 address, told apart from the port
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname', '')}"
