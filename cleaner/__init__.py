"""limpeza's cleaner: expiring files by rule, reaping stale jobs, and the state it keeps.

The web application can remove a session's files right after its final render::

    from cleaner import purge_session
    purge_session("3f9a...", config_file="/etc/limpeza/limpeza.yml")
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from cleaner.config import Config
    from cleaner.files import SweepResult

__all__ = ["__version__", "purge_session"]


def purge_session(
    session_id: str,
    *,
    config: Config | None = None,
    config_file: str | Path | None = None,
    include_final: bool = False,
    dry_run: bool = False,
) -> SweepResult:
    """Removes one session's files (see ``limpeza-cleaner purge-session``).

    Pass a loaded ``config``, or a ``config_file`` (default /etc/limpeza/limpeza.yml).
    Raises ValueError for an id that is not 1 to 128 of [A-Za-z0-9_-] (nothing is
    removed) and cleaner.config.ConfigError for an invalid configuration.
    """
    from cleaner import config as config_mod
    from cleaner import sessions

    sessions.validate_session_id(session_id)
    if config is None:
        config = config_mod.load(Path(config_file or config_mod.DEFAULT_CONFIG_PATH))
    return sessions.purge_session(
        config.files, session_id, include_final=include_final, dry_run=dry_run, now=time.time()
    )
