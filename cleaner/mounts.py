"""Mount points: whether a directory entry is the top of another mount than its directory.

Comparing ``st_dev`` is not enough: a bind mount of the same filesystem has the same device
as the directory it is mounted in, so a walk that compares devices only crosses it. The
reliable identity is the mount's id: ``statx`` returns it (``STATX_MNT_ID``, Linux 5.8,
glibc 2.28), and an entry whose mount id differs from its directory's is a mount point,
a directory or a file (a file can be bind-mounted onto another).

Where ``statx`` cannot say (an older kernel or C library), the mount points listed in
``/proc/self/mountinfo`` under the swept roots are the fallback: any entry with the
``(st_dev, st_ino)`` of one of them is taken for a mount point. That errs on the safe side:
the directory a bind mount shows is also skipped where it lies itself, inside a root.

Most sweeps have no mount point below their roots, and asking ``statx`` for every file
(through ctypes) was the largest single cost of a sweep after the ``unlink`` itself. So the
mount table is read once, at ``detect``, and kept open: when nothing is mounted below a
root, nothing below it can cross a mount, and ``crosses`` says so without a ``statx``
for as long as the kernel does not flag the table as changed (``poll`` on
``/proc/self/mountinfo`` reports POLLPRI when a mount or unmount happens in the caller's
namespace). A change re-reads the table; once something is mounted below a root, every
entry is asked again. The window between the check and the removal is the one ``statx``
left too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import select
import sys
import weakref
from collections.abc import Iterable
from pathlib import Path

#: From <linux/stat.h> and <fcntl.h>.
STATX_MNT_ID = 0x1000
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_NO_AUTOMOUNT = 0x800
AT_EMPTY_PATH = 0x1000
#: struct statx is 256 bytes; stx_mask is its first __u32 and stx_mnt_id the __u64 at 144.
_STATX_SIZE = 256
_MNT_ID_OFFSET = 144

MOUNTINFO = Path("/proc/self/mountinfo")


class _Statx:
    """ctypes access to the C library's ``statx``, for the mount id only."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.statx  # AttributeError when the C library has none
        function.argtypes = [
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_void_p,
        ]
        function.restype = ctypes.c_int
        self._function = function
        self._buffer = ctypes.create_string_buffer(_STATX_SIZE)

    def mount_id(self, dir_fd: int, name: str | bytes) -> int | None:
        """The mount id of ``name`` in ``dir_fd`` (``""``: ``dir_fd`` itself), not followed.

        None when the kernel did not fill it in; raises OSError when ``statx`` fails.
        """
        path = os.fsencode(name)
        flags = AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | (0 if path else AT_EMPTY_PATH)
        buffer = self._buffer
        if self._function(dir_fd, path, flags, STATX_MNT_ID, buffer) != 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number), os.fsdecode(path))
        raw = buffer.raw
        if not int.from_bytes(raw[0:4], sys.byteorder) & STATX_MNT_ID:
            return None
        return int.from_bytes(raw[_MNT_ID_OFFSET : _MNT_ID_OFFSET + 8], sys.byteorder)


def _unescape(field: str) -> str:
    """A mountinfo path: the kernel writes space, tab, newline and backslash in octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points_under(roots: Iterable[Path], mountinfo: Path = MOUNTINFO) -> list[str]:
    """The mount points that ``mountinfo`` lists at or below one of ``roots`` (resolved)."""
    try:
        text = mountinfo.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return []
    return _points_under([os.path.realpath(root) for root in roots], text)


def _points_under(prefixes: list[str], text: str) -> list[str]:
    found: list[str] = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        point = _unescape(fields[4])
        for prefix in prefixes:
            if point == prefix or point.startswith(prefix.rstrip("/") + "/"):
                found.append(point)
                break
    return found


class _MountTable:
    """``/proc/self/mountinfo`` kept open: whether anything is mounted strictly below the
    roots, and whether the kernel has flagged the table as changed since it was read."""

    def __init__(self, roots: list[str], mountinfo: Path) -> None:
        self._roots = roots
        self._fd = os.open(mountinfo, os.O_RDONLY | os.O_CLOEXEC)
        self._finalizer = weakref.finalize(self, os.close, self._fd)
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLPRI | select.POLLERR)
        self.clear = self._read()

    def _read(self) -> bool:
        """Reads the table (which also re-arms the change flag): True if nothing is
        mounted strictly below a root."""
        os.lseek(self._fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(self._fd, 65536):
            chunks.append(chunk)
        text = b"".join(chunks).decode("utf-8", "surrogateescape")
        # A root may be a mount point itself (its entries are on its mount); one strictly
        # below any root is not, even where it is another root.
        below = [root.rstrip("/") + "/" for root in self._roots]
        return not any(
            point.startswith(prefix)
            for point in _points_under(self._roots, text)
            for prefix in below
        )

    def still_clear(self) -> bool:
        """Whether nothing is mounted below a root now (re-read only after a change)."""
        if self.clear and self._poll.poll(0):
            self.clear = self._read()
        return self.clear

    def close(self) -> None:
        self._finalizer()


class MountPoints:
    """Tells the entries that are mount points, by mount id where the kernel gives it.

    ``of(fd)`` is the mount of an open directory; ``crosses(mount, dir_fd, name, st)``
    says whether entry ``name`` of ``dir_fd`` (whose ``lstat`` is ``st``) lies on another
    mount than ``mount``. Build one per sweep with ``detect(roots)``.
    """

    def __init__(
        self,
        statx: _Statx | None,
        tops: frozenset[tuple[int, int]],
        table: _MountTable | None = None,
    ) -> None:
        self._statx = statx
        #: (st_dev, st_ino) of the mount points under the roots: the fallback's knowledge.
        self._tops = tops
        #: The open mount table, while nothing is mounted below the roots (None: ask).
        self._table = table

    def _clear(self) -> bool:
        """Whether nothing is mounted below the roots, so nothing there crosses a mount."""
        table = self._table
        if table is None:
            return False
        if table.still_clear():
            return True
        table.close()  # something was mounted: from now on every entry is asked
        self._table = None
        return False

    def close(self) -> None:
        """Closes the mount table (also done when the object is collected)."""
        if self._table is not None:
            self._table.close()
            self._table = None

    @property
    def by_id(self) -> bool:
        """Whether mount ids are compared (else the mountinfo fallback is used)."""
        return self._statx is not None

    @classmethod
    def detect(
        cls, roots: Iterable[Path], *, use_statx: bool = True, mountinfo: Path = MOUNTINFO
    ) -> MountPoints:
        """By mount id when ``statx`` gives one for ``/``, else from ``mountinfo``."""
        roots = list(roots)
        if use_statx:
            try:
                statx = _Statx()
                by_id = statx.mount_id(AT_FDCWD, "/") is not None
            except (AttributeError, OSError):
                by_id = False
            if by_id:
                table: _MountTable | None = None
                with contextlib.suppress(OSError):  # no table to watch: every entry is asked
                    table = _MountTable([os.path.realpath(root) for root in roots], mountinfo)
                return cls(statx, frozenset(), table)
        tops: set[tuple[int, int]] = set()
        for point in mount_points_under(roots, mountinfo):
            try:
                st = os.stat(point, follow_symlinks=False)
            except OSError:
                continue
            tops.add((st.st_dev, st.st_ino))
        # The fallback knows only the mount points it read here: it is not told of later
        # ones, so it keeps no table (a new mount below a root would go unseen either way).
        return cls(None, frozenset(tops))

    def of(self, fd: int) -> int | None:
        """The mount id of the open ``fd`` (None in the fallback, which needs none)."""
        if self._statx is None:
            return None
        return self._statx.mount_id(fd, "")

    def crosses(self, mount: int | None, dir_fd: int, name: str, st: os.stat_result) -> bool:
        """Whether ``name`` in ``dir_fd`` (lstat ``st``) is on another mount than ``mount``.

        Raises OSError when it cannot be looked at (FileNotFoundError: it is gone).
        """
        if self._statx is None or mount is None:
            return (st.st_dev, st.st_ino) in self._tops
        if self._clear():
            return False
        return self._statx.mount_id(dir_fd, name) != mount

    def crosses_fd(self, mount: int | None, fd: int, st: os.stat_result) -> bool:
        """Whether the open ``fd`` (fstat ``st``) is on another mount than ``mount``."""
        if self._statx is None or mount is None:
            return (st.st_dev, st.st_ino) in self._tops
        if self._clear():
            return False
        return self._statx.mount_id(fd, "") != mount
