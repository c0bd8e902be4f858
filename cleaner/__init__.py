"""limpeza's cleaner: expiring files by rule, reaping stale jobs, and the state it keeps."""

__version__ = "0.1.0"
