"""PostgreSQL connections: bounded waits, errors with the DSN scrubbed, the kept connection.

Every wait on the network has a deadline: connecting (``connect_timeout``), a dead path
(TCP keepalives, ``tcp_user_timeout``) and a frozen server (``GuardedConnection`` cancels a
statement past its deadline, then shuts the socket down). The DSN's password never reaches
a log line or an error. ``KeptConnection`` is the one connection the reaper and the
exporter keep across cycles and scrapes: it reconnects with a backoff, replaces a
connection lost between two uses once at once, and logs one line when the database goes
down and one when it is back. What runs on a connection is in ``cleaner.jobs.database``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions

from cleaner import dsn as dsn_mod
from cleaner.config import DatabaseConfig
from cleaner.state import StageErrors

log = logging.getLogger(__name__)

Connection = psycopg2.extensions.connection
T = TypeVar("T")


def mask_dsn(dsn: str) -> str:
    """A DSN fit for a log line: a URL's whole user info and any password as ``***``."""
    return dsn_mod.mask(dsn)


class DatabaseDownError(Exception):
    """The database could not be reached; the message never holds the DSN's password.

    ``attempted`` is False when no connection was tried (a backoff was still running).
    """

    def __init__(self, message: str, *, attempted: bool = True) -> None:
        super().__init__(message)
        self.attempted = attempted


def _scrub(text: str, dsn: str) -> str:
    """``text`` with the DSN masked and its password and user info, whole or in pieces, too."""
    return dsn_mod.scrub(text, dsn)


def describe_error(exc: BaseException, db: DatabaseConfig) -> str:
    """One line about a database error, safe for a log."""
    # Scrubbed before and after the lines are joined: a secret may hold a newline or two
    # spaces in a row.
    text = " ".join(_scrub(str(exc), db.dsn or "").split()) or type(exc).__name__
    return _scrub(text, db.dsn or "")


#: A statement gets this long past its server-side ``statement_timeout`` before the client
#: cancels it, and the cancel this long before the socket is shut down (a frozen server).
STATEMENT_MARGIN = 1.0
CANCEL_GRACE = 1.0
#: The client-side deadline of a statement when ``statement_timeout`` is 0 (none).
UNLIMITED_STATEMENT = 300.0


def statement_deadline(statement_timeout: float) -> float:
    """How long one statement may wait for the server before the client cancels it."""
    base = statement_timeout if statement_timeout > 0 else UNLIMITED_STATEMENT
    return base + STATEMENT_MARGIN


def connection_parameters(
    db: DatabaseConfig, *, application_name: str, statement_timeout: float | None = None
) -> dict[str, Any]:
    """libpq parameters that bound every wait on the network.

    ``connect_timeout`` bounds connecting (per address; libpq's minimum is 2 s); TCP
    keepalives and ``tcp_user_timeout`` drop a connection whose network path died. A
    keepalive or tcp setting written in the DSN wins. A server that is frozen but whose
    kernel still answers (SIGSTOP) passes all of these: ``GuardedConnection`` covers it.
    """
    timeout = db.statement_timeout if statement_timeout is None else statement_timeout
    probe = max(1, math.ceil(db.connect_timeout))
    network: dict[str, Any] = {
        "keepalives": 1,
        "keepalives_idle": probe,
        "keepalives_interval": probe,
        "keepalives_count": 3,
        "tcp_user_timeout": math.ceil(1000 * (statement_deadline(timeout) + CANCEL_GRACE)),
    }
    given: set[str] = set()
    with contextlib.suppress(psycopg2.Error):
        given = set(psycopg2.extensions.parse_dsn(db.dsn or ""))
    return {
        "connect_timeout": max(2, math.ceil(db.connect_timeout)),
        "application_name": application_name,
        **{key: value for key, value in network.items() if key not in given},
    }


@functools.cache
def _libpq() -> ctypes.CDLL | None:
    """The libpq psycopg2 itself uses (its own copy in the binary wheel), for PQcancel."""
    try:
        lib = ctypes.CDLL(psycopg2._psycopg.__file__)
        lib.PQgetCancel.argtypes = [ctypes.c_void_p]
        lib.PQgetCancel.restype = ctypes.c_void_p
        lib.PQcancel.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        lib.PQcancel.restype = ctypes.c_int
        lib.PQfreeCancel.argtypes = [ctypes.c_void_p]
        lib.PQfreeCancel.restype = None
    except (OSError, AttributeError):
        return None
    return lib


def _send_cancel(lib: ctypes.CDLL, handle: int) -> None:
    """PQcancel, which waits for the server's answer; ctypes lets go of the GIL meanwhile."""
    errbuf = ctypes.create_string_buffer(256)
    try:
        lib.PQcancel(handle, errbuf, len(errbuf))
    finally:
        lib.PQfreeCancel(handle)


class GuardedConnection(psycopg2.extensions.connection):
    """A connection on which no statement waits for the server past ``deadline`` seconds.

    Past the deadline the statement is cancelled; if the call has still not returned
    ``CANCEL_GRACE`` later (the server is frozen, the cancel cannot reach it either), the
    socket is shut down: the blocked call fails at once and the connection is closed.
    ``timed_out`` says the deadline passed. The cancel is libpq's ``PQcancel`` called in a
    thread of its own: psycopg2's ``cancel()`` holds the GIL while PQcancel waits for the
    server, so a frozen server would freeze the whole process.
    """

    def __init__(self, dsn: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(dsn, *args, **kwargs)
        #: Seconds a statement may wait for the server; None: no deadline.
        self.deadline: float | None = None
        self.timed_out = False
        self.cursor_factory = _GuardedCursor
        self._guard = threading.Lock()
        # Our own handle on libpq's socket: shutting it down never hits a reused fd number.
        self._socket = socket.socket(fileno=os.dup(self.fileno()))

    @contextlib.contextmanager
    def watched(self) -> Iterator[None]:
        """Holds the deadline over one call into libpq."""
        if self.deadline is None:
            yield
            return
        done = threading.Event()
        threading.Thread(
            target=self._watch, args=(done, self.deadline), name="limpeza-db-deadline", daemon=True
        ).start()
        try:
            yield
        finally:
            with self._guard:
                done.set()

    def _watch(self, done: threading.Event, deadline: float) -> None:
        if done.wait(deadline):
            return
        lib = _libpq()
        with self._guard:  # the statement cannot end, nor the connection close, meanwhile
            if done.is_set():
                return
            self.timed_out = True
            handle = lib.PQgetCancel(self.pgconn_ptr) if lib is not None else None
        log.debug("database: no answer within %gs; cancelling the statement", deadline)
        if lib is not None and handle:
            threading.Thread(
                target=_send_cancel, args=(lib, handle), name="limpeza-db-cancel", daemon=True
            ).start()
        if done.wait(CANCEL_GRACE):
            return
        with self._guard:
            if not done.is_set():
                log.debug("database: the cancel went unanswered; shutting the socket down")
                with contextlib.suppress(OSError):
                    self._socket.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        super().close()
        self._socket.close()


class _GuardedCursor(psycopg2.extensions.cursor):
    """A cursor whose statements keep their connection's deadline."""

    def execute(self, query: Any, vars: Any = None) -> None:
        conn = self.connection
        if not isinstance(conn, GuardedConnection):
            return super().execute(query, vars)
        with conn.watched():
            return super().execute(query, vars)

    def executemany(self, query: Any, vars_list: Any) -> None:
        conn = self.connection
        if not isinstance(conn, GuardedConnection):
            return super().executemany(query, vars_list)
        with conn.watched():
            return super().executemany(query, vars_list)


def connect(
    db: DatabaseConfig, *, application_name: str, statement_timeout: float | None = None
) -> Connection:
    """An autocommit connection; it sets nothing for the session.

    Through a transaction-mode pooler a session setting would stay on the server connection
    for whoever gets it next (the API): every query of limpeza runs in a ``transaction()``
    that sets its limits with ``SET LOCAL`` instead.

    Raises DatabaseDownError, whose message names the server but never the password.
    """
    if not db.dsn:
        raise DatabaseDownError("no DSN: $LIMPEZA_DATABASE_URL is not set")
    try:
        # libpq would misread a malformed DSN and quote the pieces: refuse it first.
        dsn_mod.parse(db.dsn)
    except dsn_mod.DsnError as exc:
        raise DatabaseDownError(f"malformed DSN {exc.masked}: {exc.problem}") from None
    try:
        conn: GuardedConnection = psycopg2.connect(
            db.dsn,
            connection_factory=GuardedConnection,
            **connection_parameters(
                db, application_name=application_name, statement_timeout=statement_timeout
            ),
        )
        # Every statement gets a client-side deadline (GuardedConnection): a frozen server
        # costs at most this, where its own statement_timeout could never fire.
        conn.deadline = statement_deadline(
            db.statement_timeout if statement_timeout is None else statement_timeout
        )
    except (psycopg2.Error, ValueError) as exc:
        raise DatabaseDownError(
            f"cannot connect to {mask_dsn(db.dsn)}: {describe_error(exc, db)}"
        ) from None
    try:
        conn.autocommit = True
    except psycopg2.Error as exc:
        conn.close()
        raise DatabaseDownError(
            f"cannot set up the session on {mask_dsn(db.dsn)}: {describe_error(exc, db)}"
        ) from None
    return conn


class DatabaseError(Exception):
    """A statement failed on a live connection; the message never holds the password."""


class KeptConnection:
    """One connection kept across uses, reconnected with a backoff when it is lost.

    ``run(work)`` hands ``work`` the open connection (opening one if needed) and returns its
    result. It raises ``DatabaseDownError`` when the database cannot be reached, or while
    the backoff after a failed attempt runs (``attempted`` is False then), and
    ``DatabaseError`` when a statement failed on a live connection. A kept connection found
    dead (the server restarted since the last use) is replaced once at once, so a restart
    between two uses costs nothing. The backoff doubles from 1 s up to ``max_backoff``.
    No call waits on the server without a deadline: connecting is bounded by
    ``connect_timeout``, each statement of ``work`` by ``statement_deadline`` (see
    ``GuardedConnection``); a statement that outlives it (a frozen server or pooler) makes
    ``run`` raise ``DatabaseDownError`` without trying to connect again at once.
    Unless ``log_changes`` is off (the caller logs its own), it logs one warning when the
    database goes down and one line when it is back.
    """

    def __init__(
        self,
        db: DatabaseConfig,
        *,
        application_name: str,
        statement_timeout: float | None = None,
        max_backoff: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        log_changes: bool = True,
    ) -> None:
        self.db = db
        self.application_name = application_name
        self.statement_timeout = statement_timeout
        self.max_backoff = max_backoff
        self._clock = clock
        self._log_changes = log_changes
        self._conn: Connection | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._reason = ""
        #: The last failure of each step (``run_step``'s ``doing``), to log it once.
        self.step_problems: dict[str, str] = {}
        #: True after a successful connect, False after a failed one, None before any.
        self.up: bool | None = None

    def run(self, work: Callable[[Connection], T]) -> T:
        for attempt in range(2):
            reused = self._conn is not None and not self._conn.closed
            conn = self._open()
            if isinstance(conn, GuardedConnection):
                conn.timed_out = False
            try:
                return work(conn)
            except psycopg2.Error as exc:
                reason = describe_error(exc, self.db)
                # A statement past its client-side deadline: the server is frozen or out of
                # reach, and connecting again now would only wait out connect_timeout too.
                timed_out = isinstance(conn, GuardedConnection) and conn.timed_out
                if isinstance(conn, GuardedConnection) and conn.timed_out:
                    reason = f"no answer within {conn.deadline or 0:g}s ({reason})"
                if not conn.closed:
                    raise DatabaseError(reason) from None
                self._drop()
                if reused and attempt == 0 and not timed_out:
                    log.debug("database: kept connection lost (%s); reconnecting", reason)
                    continue
                raise self._down(reason) from None
        raise AssertionError("unreachable")

    def _open(self) -> Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        self._conn = None
        if self.up is False and self._clock() < self._retry_at:
            raise DatabaseDownError(self._reason, attempted=False)
        try:
            conn = connect(
                self.db,
                application_name=self.application_name,
                statement_timeout=self.statement_timeout,
            )
        except DatabaseDownError as exc:
            raise self._down(str(exc)) from None
        if self.up is False and self._log_changes:
            log.info("database back after %d failed attempts", self._failures)
        self.up = True
        self._failures = 0
        self._conn = conn
        return conn

    def _down(self, reason: str) -> DatabaseDownError:
        self._failures += 1
        # The exponent is capped: 2.0 ** 1024 overflows, and a database can stay down for
        # more than a thousand attempts (the exporter tries once per scrape).
        backoff = 2.0 ** min(self._failures - 1, 30)
        self._retry_at = self._clock() + min(self.max_backoff, backoff)
        if self.up is not False and self._log_changes:
            log.warning(
                "database down: %s; reconnecting with backoff up to %gs",
                reason,
                self.max_backoff,
            )
        else:
            log.debug("database still down: %s", reason)
        self.up = False
        self._reason = reason
        return DatabaseDownError(reason)

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        """Closes the connection; the next ``run`` opens a new one."""
        self._drop()


def run_step(
    database: KeptConnection, errors: StageErrors, doing: str, work: Callable[[Connection], T]
) -> T | None:
    """Runs one step of a stage on the kept connection; None when it could not.

    A database that is down adds ``database: down`` (counted when a connection was tried;
    the kept connection logs the change); a failed statement is counted and added every
    time but logged once per change of error (a read-only standby or a missing table
    says the same every cycle), and once more when the step works again.
    """
    try:
        result = database.run(work)
    except DatabaseDownError as exc:
        errors.add("database" if exc.attempted else None, "database: down")
        return None
    except DatabaseError as exc:
        if database.step_problems.get(doing) != str(exc):
            log.warning("database: %s failed: %s", doing, exc)
        else:
            log.debug("database: %s still failing: %s", doing, exc)
        database.step_problems[doing] = str(exc)
        errors.add("database", f"database: {doing}: {exc}")
        return None
    if database.step_problems.pop(doing, None) is not None:
        log.info("database: %s works again", doing)
    return result
