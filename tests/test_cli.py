"""The command line itself: --version, -h, completion, and help generated from the settings."""

from __future__ import annotations

import inspect
import re
from importlib.metadata import version
from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from geovq.cli import _Target, app
from geovq.settings import Settings
from tests.helpers import cli

COMMANDS = {info.name: info.callback for info in app.registered_commands}
# Settings only `geovq run`'s plan reads; they have no flag of their own (TOML, env, --set).
NO_FLAG = (
    {f"study.{name}" for name in ("metrics", "spatial", "spatial_metrics")}
    | {f"study.{name}" for name in ("per_position_metrics", "vqvae_grids", "refit", "priors")}
    | {
        f"study.{name}"
        for name in (
            "geodesic_codewords",
            "flat_target_rate",
            "spatial_target_rate",
            "spatial_rate_per_position",
            "spatial_channels",
            "transform_channels",
            "equal_epochs",
            "fsq",
        )
    }
)


def all_fields(model: type[BaseModel] = Settings, prefix: str = "") -> dict[str, Any]:
    """Every leaf settings field by dotted path."""
    found = {}
    for name, info in model.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            found.update(all_fields(info.annotation, f"{prefix}{name}."))
        else:
            found[prefix + name] = info
    return found


def flags_of(command: str) -> dict[str, str]:
    """Settings path -> the command's flag for it (the parameter's first declared name)."""
    found = {}
    for param in inspect.signature(COMMANDS[command]).parameters.values():
        meta = getattr(param.annotation, "__metadata__", ())
        targets = [m for m in meta if isinstance(m, _Target)]
        if targets:
            option = next(m for m in meta if hasattr(m, "param_decls"))
            # Under Annotated, typer.Option's first positional (``default``) is the first flag.
            found[targets[0].paths[0]] = option.default
    return found


def help_of(*args: str) -> str:
    """Help as plain text: box drawing removed and whitespace collapsed (Rich wraps lines)."""
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


def expected_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "none"
    return str(value)


def literal_choices(annotation: Any) -> list[str]:
    if get_origin(annotation) is Literal:
        return [str(v) for v in get_args(annotation)]
    return [c for arg in get_args(annotation) for c in literal_choices(arg)]


def test_version_comes_from_the_installed_metadata():
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"geovq {version('geovq')}"


@pytest.mark.parametrize("args", [["-h"], ["quantize", "-h"], ["run", "-h"]])
def test_short_help(args):
    result = cli(*args)
    assert result.exit_code == 0 and "Usage" in result.stdout


def test_completion_script_and_choices_complete():
    script = cli("--show-completion", "bash")
    assert script.exit_code == 0
    assert "_GEOVQ_COMPLETE=complete_bash" in script.stdout
    env = {
        "_GEOVQ_COMPLETE": "complete_bash",
        "COMP_WORDS": "geovq quantize --metric ",
        "COMP_CWORD": "3",
    }
    done = CliRunner().invoke(app, [], env=env, prog_name="geovq")
    assert done.stdout.split() == ["euclidean", "w2", "geodesic", "scalar", "transform"]


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"info"}))
def test_help_shows_every_default_and_choice_of_the_settings(command):
    text = help_of(command)
    fields = all_fields()
    for path, flag in flags_of(command).items():
        info = fields[path]
        assert flag in text
        default = info.get_default()
        if default is not None:
            assert f"[default: {expected_default(default)}]" in text, (command, path)
        for choice in literal_choices(info.annotation):
            assert re.search(rf"[<|, ]{re.escape(choice)}[>|,.]", text), (command, path, choice)


def test_every_setting_has_a_flag_somewhere():
    reachable = {path for command in COMMANDS for path in flags_of(command)}
    assert set(all_fields()) - reachable == NO_FLAG


def test_help_groups_options_in_panels():
    text = help_of("train-vae")
    for panel in ("Data", "Model", "Training", "Output", "Global"):
        assert f" {panel} " in text


def test_run_force_names_the_stages():
    text = help_of("run")
    for stage in ("train-vae", "extract", "quantize", "refit-decoder", "train-prior", "compare"):
        assert stage in text


def test_a_choice_is_checked_by_the_model_in_one_line(tmp_path):
    result = cli("quantize", "--run-dir", tmp_path, "--metric", "cosine")
    assert result.exit_code == 2
    assert "--metric" in result.stderr and "'w2'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_piped_tables_are_printed_whole_and_cells_are_not_markup(monkeypatch, capsys):
    from geovq.cli import _print_result
    from geovq.stages.record import StageResult

    monkeypatch.delenv("COLUMNS")  # piped: no terminal width
    columns = ["quantization"] + [f"column {i}" for i in range(14)]
    name = "quant/geodesic-bary-k256-spatial [vae decoder]"
    _print_result(
        StageResult("compare/test", {}, columns=columns, rows=[[name] + ["0.12345"] * 14]), False
    )
    out = capsys.readouterr().out
    assert name in out and "0.12345" in out and "…" not in out
