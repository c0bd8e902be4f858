"""What no sane configuration sweeps unless its rule says ``allow_dangerous: true``.

Two things are refused by check-config (and so never reach a sweep) on a rule without it:

- a **system directory**: ``/``, one of SYSTEM_DIRECTORIES, or a directory directly in one
  of CONTAINERS (``/etc/ssl``, ``/usr/lib``, ``/home/alice``). Paths are compared as
  written, after removing ``.`` and repeated slashes (``..`` is refused on its own); a
  symlink the operator made to such a directory is not followed here.
- a **catch-all pattern**: a glob with no literal character but dots (``*``, ``?*``,
  ``.*``, ``*.*``, ``[a-z]*``), which selects every name whatever the application put
  there, not one kind of temporary file (see cleaner.patterns.is_catch_all).
"""

from __future__ import annotations

from pathlib import PurePosixPath

#: Directories a rule never sweeps without allow_dangerous: the root of the system's
#: programs, configuration, users' data and kernel interfaces.
SYSTEM_DIRECTORIES = frozenset(
    {
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/usr",
        "/var",
        "/var/lib",
    }
)
#: Directories whose every direct subdirectory is a system directory too: /etc/ssl,
#: /usr/lib, /var/lib/postgresql, /home/alice. Not /, /var, /srv, /opt nor /run, whose
#: subdirectories such as /var/tmp or /srv/app are what a cleaner is for.
CONTAINERS = SYSTEM_DIRECTORIES - {"/", "/opt", "/run", "/srv", "/var"}


def normal(path: str) -> str:
    """``path`` with ``.``, trailing and repeated slashes gone: ``//etc/./`` is ``/etc``."""
    parts = [p for p in PurePosixPath(path).parts[1:] if p not in ("", ".")]
    return "/" + "/".join(parts)


def is_system_directory(path: str) -> bool:
    """Whether a rule may sweep ``path`` only with allow_dangerous."""
    text = normal(path)
    return text in SYSTEM_DIRECTORIES or str(PurePosixPath(text).parent) in CONTAINERS
