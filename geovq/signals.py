"""Ctrl-C and SIGTERM as exceptions, and the few steps they must not cut in half.

``kill`` and torchrun (stopping the other ranks when one fails) send SIGTERM, whose default
ends the process at once and leaves half-written temporary files behind. Raised as an
interrupt instead, every cleanup that runs on Ctrl-C runs on it too. A journaled commit
(``RunDir``) holds both back until it has moved its files: once started it finishes.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

from geovq import Terminated

_held = 0  # depth of ``held()`` blocks now running
_pending: list[int] = []  # signals that arrived during them


def install() -> None:
    """Route SIGINT and SIGTERM through geovq (the CLI's entry point calls it)."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def ignore() -> None:
    """Ignore both from here on: for a process whose command has ended and only exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Defer Ctrl-C and SIGTERM to the end of the block (a no-op where not installed)."""
    global _held
    _held += 1
    try:
        yield
    finally:
        _held -= 1
    if not _held and _pending:
        _raise(_pending.pop())


def _on_signal(signum: int, frame: object) -> None:
    if _held:
        _pending.append(signum)
        return
    _raise(signum)


def _raise(signum: int) -> None:
    _pending.clear()
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends the process at once
        raise Terminated
    raise KeyboardInterrupt
