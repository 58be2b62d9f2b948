"""``geovq config``: the settings as a user sees them. ``show`` lists every setting with its
resolved value and where that came from; ``init`` writes a commented ``geovq.toml`` template
whose every line, uncommented, restates a default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from geovq import GeovqError
from geovq.progress import NullProgress
from geovq.rundir import atomic_write_bytes
from geovq.settings import (
    CONFIG_NAME,
    Settings,
    format_value,
    literal_choices,
    setting_paths,
    source_of,
)
from geovq.stages.record import StageResult

HEADER = """\
# geovq settings. Sources, lowest first: defaults < this file < environment variables
# (GEOVQ_SECTION__FIELD) < flags and --set SECTION.FIELD=VALUE. Every line below restates a
# default: uncomment one to change it. `geovq config show` prints what is in effect and why.
"""


def show(settings: Settings, progress: NullProgress | None = None) -> StageResult:
    """Every setting, its value, and its source (default, preset, file and key, env var, flag)."""
    rows, metrics = [], {}
    for path in setting_paths():
        value = _value(settings, path)
        source = source_of(settings, path)
        metrics[path] = {"value": _jsonable(value), "source": source}
        rows.append([path, format_value(value) if value is not None else "-", source])
    return StageResult(
        "config show",
        {"settings": metrics},
        title="settings",
        columns=["setting", "value", "source"],
        rows=rows,
    )


def init(settings: Settings, progress: NullProgress | None = None) -> StageResult:
    """Write ``RUN/geovq.toml``; refuses to replace an existing one without ``--force``."""
    path = Path(settings.run_dir) / CONFIG_NAME
    if path.exists() and not settings.force:
        raise GeovqError(f"{path} exists; pass --force to replace it with the template")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, template().encode())
    return StageResult(
        "config init",
        {"path": str(path)},
        title="config init",
        rows=[["written", str(path)]],
    )


def template() -> str:
    """The commented TOML: per setting its description, choices, and ``# key = default``."""
    lines = [HEADER]
    section = ""
    for path, info in setting_paths().items():
        head, _, name = path.rpartition(".")
        if head != section:
            section = head
            lines.append(f"\n[{section}]")
        text = info.description or ""
        choices = literal_choices(info.annotation)
        if choices:
            text += f" One of: {', '.join(format_value(c) for c in choices)}."
        default = info.get_default()
        if default is None:
            lines += [f"# {text} Unset by default.", f"# {name} ="]
        else:
            lines += [f"# {text}", f"# {name} = {toml_value(default)}"]
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    """A default as a TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string


def _value(settings: Any, path: str) -> Any:
    for part in path.split("."):
        settings = getattr(settings, part)
    return settings


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    return value
