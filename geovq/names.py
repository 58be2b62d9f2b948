"""The one rule for names a user gives (``--name``, ``--vae``, ``--as``, ``--source``).

A name becomes part of a path inside the run directory, so it must stay a plain name: letters,
digits, ``_`` and ``-``, starting with a letter or digit, at most 64 characters. That rules
out separators, ``..``, a leading dot and absolute paths in one check.
"""

from __future__ import annotations

import re

from geovq import GeovqError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
SOURCE_KINDS = ("quant", "vqvae")


def check_name(value: str, flag: str = "--name") -> str:
    """``value`` if it is a plain name, else GeovqError naming the flag and the rule."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise GeovqError(
            f"{flag} {value!r} is not a plain name; use 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit (no '/', '..' or leading '.')"
        )
    return value


def parse_source(value: str, flag: str = "--source") -> tuple[str, str]:
    """'quant/w2-k256' -> ('quant', 'w2-k256'); the kind and the name are both checked."""
    kind, _, name = value.partition("/") if isinstance(value, str) else ("", "", "")
    if kind not in SOURCE_KINDS or not name:
        raise GeovqError(f"{flag} {value!r} is not of the form quant/<name> or vqvae/<name>")
    check_name(name, flag)
    return kind, name
