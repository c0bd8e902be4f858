"""limpeza's cleaner: expiring files by rule, reaping stale jobs, and the state it keeps.

The web application can remove a session's files right after its final render::

    from cleaner import purge_session
    purge_session("3f9a...", config_file="/etc/limpeza/limpeza.yml")
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from cleaner.config import Config
    from cleaner.sweep_result import SweepResult

__all__ = ["__version__", "purge_session"]


def purge_session(
    session_id: str,
    *,
    config: Config | None = None,
    config_file: str | Path | None = None,
    include_final: bool = False,
    dry_run: bool = False,
    env: Mapping[str, str] | None = None,
) -> SweepResult:
    """Removes one session's files as ``limpeza-cleaner purge-session`` does.

    The same path as the command: each removal goes to the audit log and the counts to
    the state file (neither in a dry run). The configuration is found and read as the
    command finds it: ``config_file``, else ``$LIMPEZA_CONFIG``, else
    /etc/limpeza/limpeza.yml, with the ``LIMPEZA_*`` overrides of ``env`` (default: the
    process environment) and of a ``.env`` file beside it. A ``config`` already loaded is
    used as it is. Raises ValueError for an id that is not 1 to 128 of [A-Za-z0-9_-]
    (nothing is removed) and cleaner.config.ConfigError for an invalid configuration.
    """
    from cleaner import config as config_mod
    from cleaner import sessions

    sessions.validate_session_id(session_id)
    if config is None:
        environ = dict(os.environ if env is None else env)
        path = config_mod.resolve_path(str(config_file) if config_file else None, environ)
        config = config_mod.load(path, environ)
    return sessions.purge_and_record(
        config, session_id, include_final=include_final, dry_run=dry_run
    )
