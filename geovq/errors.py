"""Failures outside geovq's own checks, described in one line: the filesystem (read-only, no
space, permissions), memory, settings sources, another torchrun process stopping. The CLI's
edge uses this; a failure it does not know is a bug and keeps its traceback.
"""

from __future__ import annotations

from geovq import GeovqError
from geovq.distributed import describe_collective_failure
from geovq.rundir import os_error_message

_OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory", "bad_alloc")


def describe_failure(error: BaseException) -> str | None:
    """One line for a failure a user can act on, or None."""
    if isinstance(error, GeovqError):
        return str(error)
    if isinstance(error, OSError):
        return os_error_message(error)
    if isinstance(error, MemoryError) or _is_allocation_failure(error):
        return (
            "out of memory: the sizes asked for do not fit on this machine "
            f"({_first_line(error)}); use smaller sizes (--n, --samples, --batch-size, --k, "
            "--hidden, --latent-dim) or another --device"
        )
    collective = describe_collective_failure(error)
    if collective is not None:
        return collective
    settings_error = _settings_error(error)
    if settings_error is not None:
        return settings_error
    return None


def _is_allocation_failure(error: BaseException) -> bool:
    if not isinstance(error, RuntimeError):
        return False
    text = str(error).lower()
    return any(marker in text for marker in _OOM_MARKERS)


def _settings_error(error: BaseException) -> str | None:
    from pydantic_settings import SettingsError

    if isinstance(error, SettingsError):
        cause = f" ({_first_line(error.__cause__)})" if error.__cause__ else ""
        return f"{_first_line(error)}{cause}; fix that environment variable or config value"
    return None


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
