"""The ``geovq`` command line: flags -> settings -> a stage -> a table or JSON. No logic here.

Adding a flag is a settings field plus one line here. Give the field its default and a
``Field(description=...)`` (choices as a ``Literal``) in settings.py, then add one parameter to
the command below::

    knn: setting("quantize.knn") = None

``setting`` takes the help text, the shown default and the choices from that field, so help and
code cannot disagree; the flag is ``--`` + the field name in kebab case unless named
(``setting("vae.name", "--vae")``); the help panel follows from the section. Options default
to None and only flags the user typed become overrides (``g.overrides``), so a config file or
the environment is never silently beaten by an unset flag's default. Every command also takes
the global options (``--run-dir``, ``--config``, ``--device``, ``--seed``, ``--force``,
``--set``, ``--quiet``, ``--json``); ``--set PATH=VALUE`` reaches any field, flag or not.
"""

import functools
import inspect
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from rich.markup import escape

from geovq import Interrupted, Terminated, __version__, distributed, signals
from geovq.progress import make_progress
from geovq.settings import (
    TrainSettings,
    format_value,
    literal_choices,
    load_settings,
    put_setting,
    setting_paths,
)
from geovq.stages.record import StageResult

app = typer.Typer(
    name="geovq",
    help="A-posteriori vector quantization of learned latent spaces.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports it
PIPED_WIDTH = 160  # columns of piped output, at least

DATA, MODEL, TRAINING, OUTPUT, GLOBAL = "Data", "Model", "Training", "Output", "Global"
_OUTPUT_FIELDS = {"quantize.name", "vqvae.name", "sample.out", "extract.as_name"}


@dataclass(frozen=True)
class _Target:
    """Marks a CLI parameter as setting these settings fields (dotted paths) via ``flag``."""

    paths: tuple[str, ...]
    flag: str


def _cli_type(annotation: Any) -> Any:
    """What Typer parses: ``X | None`` as X, a Literal as its values' type, ``list[X]`` as a list.
    Choices are checked by the settings model, so a bad one is the same one-line error
    from a flag, the environment or a config file."""
    if get_origin(annotation) in (Union, UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is list:
        return list[_cli_type(get_args(annotation)[0])]
    if get_origin(annotation) is Literal:
        return type(get_args(annotation)[0])
    if get_origin(annotation) is tuple:  # e.g. levels "8,8,4": the settings parse the text
        return str
    return annotation


def setting(
    path: str,
    *flags: str,
    also: tuple[str, ...] = (),
    help: str | None = None,
    panel: str | None = None,
    metavar: str | None = None,
) -> Any:
    """``Annotated`` type of a CLI option that sets settings field ``path`` (and ``also``)."""
    info = setting_paths()[path]
    name = path.rsplit(".", 1)[-1]
    flags = flags or ("--" + name.replace("_", "-"),)
    choices = [format_value(c) for c in literal_choices(info.annotation)]
    cli_type = _cli_type(info.annotation)
    description = help or info.description or ""
    if choices and get_origin(cli_type) is list:  # repeatable: name the choices in the text
        description = f"{description} One of: {', '.join(choices)}."
        metavar = metavar or "<" + name.upper() + ">"
    elif choices:
        metavar = metavar or "<" + "|".join(choices) + ">"
    option = typer.Option(
        *flags,
        help=help_text(description, info.get_default()),
        metavar=metavar,
        autocompletion=(lambda: choices) if choices else None,
        rich_help_panel=panel or _panel(path),
    )
    return Annotated[cli_type | None, option, _Target((path, *also), flags[0])]


def help_text(description: str, default: Any) -> str:
    """``description [default: VALUE]`` with Rich markup escaped; no default shown for None."""
    if default is not None:
        description = f"{description} [default: {format_value(default)}]"
    return escape(description)


def _panel(path: str) -> str:
    section, _, name = path.rpartition(".")
    if not section:
        return GLOBAL
    if section == "data":
        return DATA
    if path in _OUTPUT_FIELDS:
        return OUTPUT
    if name in TrainSettings.model_fields:
        return TRAINING
    return MODEL


@dataclass
class Globals:
    config: Path | None = None
    quiet: bool | None = None
    json: bool | None = None
    sets: list[str] = field(default_factory=list)  # --set SECTION.FIELD=VALUE, in order
    overrides: dict[str, Any] = field(default_factory=dict)  # the settings the user typed
    origins: dict[str, str] = field(default_factory=dict)  # settings path -> its flag


_GLOBAL_OPTIONS: list[tuple[str, Any]] = [
    ("run_dir", setting("run_dir")),
    (
        "config",
        Annotated[
            Path | None,
            typer.Option(
                "--config",
                help=help_text("TOML config file.", "RUN/geovq.toml"),
                rich_help_panel=GLOBAL,
            ),
        ],
    ),
    ("device", setting("device")),
    ("seed", setting("seed")),
    ("force", setting("force")),
    (
        "sets",
        Annotated[
            list[str] | None,
            typer.Option(
                "--set",
                metavar="SECTION.FIELD=VALUE",
                help="Any setting, e.g. --set vae.epochs=5 (repeatable; same rank as a flag, "
                "applied after the flags; a list takes commas). `geovq config show` lists them.",
                rich_help_panel=GLOBAL,
            ),
        ],
    ),
    (
        "quiet",
        Annotated[
            bool | None,
            typer.Option("--quiet", "-q", help="No progress or logs.", rich_help_panel=OUTPUT),
        ],
    ),
    (
        "json",
        Annotated[
            bool | None,
            typer.Option(
                "--json", help="Print the result as one JSON document.", rich_help_panel=OUTPUT
            ),
        ],
    ),
]


def _target(annotation: Any) -> _Target | None:
    found = [m for m in getattr(annotation, "__metadata__", ()) if isinstance(m, _Target)]
    return found[0] if found else None


def command(name: str, without: tuple[str, ...] = (), group: typer.Typer = app) -> Callable:
    """Register ``fn(g: Globals, **options)`` as subcommand ``name`` of ``group`` with the
    global options, except those in ``without`` (which the command defines its own way).
    Options made with ``setting`` land in ``g.overrides``; the others reach ``fn`` as
    keyword arguments."""

    def register(fn: Callable) -> Callable:
        signature = inspect.signature(fn)
        own = [p for p in signature.parameters.values() if p.name != "g"]
        extra = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=t)
            for n, t in _GLOBAL_OPTIONS
            if n not in without
        ]
        targets = {p.name: _target(p.annotation) for p in own + extra}

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> None:
            g = Globals()
            for key, target in targets.items():
                value = kwargs.get(key)
                if (
                    target is not None
                    and value is not None
                    and not (isinstance(value, list) and not value)
                ):
                    for path in target.paths:
                        put_setting(g.overrides, path, value)
                        g.origins[path] = target.flag
            for key in ("config", "quiet", "json", "sets"):
                if key not in without:
                    setattr(g, key, kwargs.pop(key) or getattr(g, key))
            own_names = {p.name for p in own}
            fn(g, **{k: v for k, v in kwargs.items() if k in own_names})

        wrapper.__signature__ = signature.replace(parameters=own + extra)
        wrapper.__annotations__ = {p.name: p.annotation for p in own + extra}
        group.command(name, help=inspect.getdoc(fn))(wrapper)
        return fn

    return register


def _show_version(value: bool) -> None:
    if value:
        print(f"geovq {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="Show the version and exit.",
        ),
    ] = False,
) -> None:
    """A-posteriori vector quantization of learned latent spaces."""


def run_stage(
    g: Globals,
    stage: Callable[..., StageResult],
    presets: dict[str, dict[str, Any]] | None = None,
    every_rank: bool = False,
) -> None:
    """Build settings, run the stage, print its result; every failure becomes one stderr line.
    Under torchrun only rank 0 talks; ``every_rank``: the stage shares its work out to the
    ranks (else rank 0 runs it alone)."""
    quiet = bool(g.quiet) or not distributed.launched().is_main
    progress = make_progress(quiet, as_json=bool(g.json))
    try:
        settings = load_settings(
            g.overrides, config=g.config, assignments=g.sets, origins=g.origins, presets=presets
        )
        result = distributed.run(stage, settings, progress, every_rank=every_rank)
    except BaseException as error:  # noqa: BLE001 - the edge: one line for every failure
        progress.close()
        message, code = failure_line(error)
        if message is None:
            raise
        _fail(message, code)
    progress.close()
    if result is not None:
        _print_result(result, as_json=bool(g.json))


def failure_line(error: BaseException) -> tuple[str | None, int]:
    """The one line (and exit code) for a failure, or None for one to re-raise (a bug)."""
    from geovq.errors import describe_failure

    if isinstance(error, Interrupted):
        return str(error), EXIT_INTERRUPTED
    if isinstance(error, Terminated):
        return (
            "terminated (SIGTERM); nothing half-written was left in the run directory",
            EXIT_TERMINATED,
        )
    if isinstance(error, KeyboardInterrupt):
        return "interrupted; nothing half-written was left in the run directory", EXIT_INTERRUPTED
    return describe_failure(error), EXIT_USER_ERROR


def _fail(message: str, code: int) -> None:
    if os.environ.get("GEOVQ_DEBUG") == "1":
        raise
    line = distributed.tag(" ".join(message.split()))
    print(f"geovq: error: {line}", file=sys.stderr)
    raise typer.Exit(code)


def _print_result(result: StageResult, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result.to_json(), default=str) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=result.title or result.stage)
    for column in result.columns:
        table.add_column(escape(column))
    for row in result.rows:  # a cell is text, not markup: "w2-k16 [vae decoder]" stays whole
        table.add_row(*[escape(str(cell)) for cell in row])
    # Piped output has no terminal width: print the table whole (compare's is ~190 wide)
    # rather than squeezing it into 80 columns.
    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    console = Console(width=_unsqueezed_width(table) if piped else None)
    console.print(table)
    for note in result.notes:
        console.print(note, highlight=False, markup=False)


def _unsqueezed_width(table) -> int:
    """Columns a Rich table takes without wrapping or cutting a cell, at least PIPED_WIDTH."""
    from rich.console import Console
    from rich.measure import Measurement

    probe = Console(width=10_000)
    return max(PIPED_WIDTH, Measurement.get(probe, probe.options, table).maximum)


# -- commands ----------------------------------------------------------------------------------
# Options every command with data shares: the data section.
Dataset = setting("data.dataset")
Limit = setting("data.limit")
DataDir = setting("data.data_dir")
Download = setting("data.download")
ImageSize = setting("data.image_size")
Channels = setting("data.channels")
# Training curves (every trained stage, and run).
Curves = setting("log", panel=OUTPUT)


@command("train-vae")
def train_vae_command(
    g: Globals,
    dataset: Dataset = None,
    limit: Limit = None,
    data_dir: DataDir = None,
    download: Download = None,
    image_size: ImageSize = None,
    channels: Channels = None,
    epochs: setting("vae.epochs") = None,
    batch_size: setting("vae.batch_size") = None,
    lr: setting("vae.lr") = None,
    beta: setting("vae.beta") = None,
    target_rate: setting("vae.target_rate") = None,
    rate_gain: setting("vae.rate_gain") = None,
    rate_chunks: setting("vae.rate_chunks") = None,
    free_bits: setting("vae.free_bits") = None,
    recon_loss: setting("vae.recon_loss") = None,
    latent: setting("vae.latent") = None,
    latent_dim: setting("vae.latent_dim") = None,
    spatial_channels: setting("vae.spatial_channels") = None,
    trunk: setting("vae.trunk") = None,
    resume: setting("vae.resume") = None,
    vae_name: setting("vae.name", "--vae") = None,
    log: Curves = None,
) -> None:
    """Train the continuous convolutional VAE."""
    from geovq.stages import train_vae

    run_stage(g, train_vae.run, every_rank=True)


@command("extract")
def extract_command(
    g: Globals,
    dataset: Dataset = None,
    limit: Limit = None,
    data_dir: DataDir = None,
    download: Download = None,
    image_size: ImageSize = None,
    channels: Channels = None,
    as_name: setting("extract.as_name", "--as") = None,
    batch_size: setting("extract.batch_size") = None,
    vae_name: setting("vae.name", "--vae") = None,
) -> None:
    """Encode every split with the trained VAE into latents (mu, log sigma^2)."""
    from geovq.stages import extract

    if as_name is None and g.overrides.get("data"):
        _fail("--dataset and other data options need --as NAME with extract", EXIT_USER_ERROR)
    run_stage(g, extract.run, every_rank=True)


@command("quantize")
def quantize_command(
    g: Globals,
    metric: setting("quantize.metric") = None,
    k: setting("quantize.k") = None,
    levels: setting("quantize.levels") = None,
    codeword: setting("quantize.codeword") = None,
    chunks: setting("quantize.chunks") = None,
    grid: setting("quantize.grid") = None,
    codebook: setting("quantize.codebook") = None,
    name: setting("quantize.name") = None,
    fit_split: setting("quantize.fit_split") = None,
    restarts: setting("quantize.restarts") = None,
    iters: setting("quantize.iters") = None,
    tol: setting("quantize.tol") = None,
    knn: setting("quantize.knn") = None,
    edge_weight: setting("quantize.edge_weight") = None,
    assign: setting("quantize.assign") = None,
    refit_decoder: setting("quantize.refit_decoder") = None,
    vae_name: setting("vae.name", "--vae") = None,
) -> None:
    """Cluster latent chunks into a codebook after training; codes for every split."""
    from geovq.stages import pipeline

    run_stage(g, pipeline.quantize_then_refit)


@command("refit-decoder")
def refit_decoder_command(
    g: Globals,
    source: setting("refit.source") = None,
    epochs: setting("refit.epochs") = None,
    batch_size: setting("refit.batch_size") = None,
    lr: setting("refit.lr") = None,
    resume: setting("refit.resume") = None,
    log: Curves = None,
) -> None:
    """Fine-tune the VAE decoder on a post-hoc quantization's fixed codes."""
    from geovq.stages import refit_decoder

    run_stage(g, refit_decoder.run, every_rank=True)


@command("train-vqvae")
def train_vqvae_command(
    g: Globals,
    grid: setting("vqvae.grid") = None,
    quantizer: setting("vqvae.quantizer") = None,
    levels: setting("vqvae.levels") = None,
    k: setting("vqvae.k") = None,
    codebook_dim: setting("vqvae.codebook_dim") = None,
    beta: setting("vqvae.beta") = None,
    codebook_update: setting("vqvae.codebook_update") = None,
    ema_decay: setting("vqvae.ema_decay") = None,
    dead_code_restart: setting("vqvae.dead_code_restart") = None,
    init: setting("vqvae.init") = None,
    trunk: setting("vqvae.trunk") = None,
    recon_loss: setting("vqvae.recon_loss") = None,
    name: setting("vqvae.name") = None,
    epochs: setting("vqvae.epochs") = None,
    batch_size: setting("vqvae.batch_size") = None,
    lr: setting("vqvae.lr") = None,
    resume: setting("vqvae.resume") = None,
    log: Curves = None,
    dataset: Dataset = None,
    limit: Limit = None,
    data_dir: DataDir = None,
    download: Download = None,
    image_size: ImageSize = None,
    channels: Channels = None,
) -> None:
    """Train the end-to-end VQ-VAE baseline on the run's data and trunks."""
    from geovq.stages import train_vqvae

    run_stage(g, train_vqvae.run, every_rank=True)


@command("train-prior")
def train_prior_command(
    g: Globals,
    source: setting("prior.source") = None,
    layers: setting("prior.layers") = None,
    hidden: setting("prior.hidden") = None,
    conditional: setting("prior.conditional") = None,
    epochs: setting("prior.epochs") = None,
    batch_size: setting("prior.batch_size") = None,
    lr: setting("prior.lr") = None,
    resume: setting("prior.resume") = None,
    log: Curves = None,
) -> None:
    """Train a gated PixelCNN prior over a source's code grids."""
    from geovq.stages import train_prior

    run_stage(g, train_prior.run, every_rank=True)


@command("sample")
def sample_command(
    g: Globals,
    source: setting("sample.source") = None,
    mode: setting("sample.mode") = None,
    n: setting("sample.n") = None,
    temperature: setting("sample.temperature") = None,
    top_k: setting("sample.top_k") = None,
    class_label: setting("sample.class_label", "--class") = None,
    out: setting("sample.out") = None,
    vae_name: setting("vae.name", "--vae") = None,
) -> None:
    """Generate images: prior -> codes -> decoder (or random codes, or the VAE)."""
    from geovq.stages import sample

    run_stage(g, sample.run)


@command("compare")
def compare_command(
    g: Globals,
    split: setting("compare.split") = None,
    sweep_k: setting("compare.sweep_k") = None,
    samples: setting("compare.samples") = None,
    classifier_epochs: setting("compare.classifier_epochs") = None,
    rate: setting("compare.rate") = None,
) -> None:
    """Evaluate every quantization side by side: table, report/metrics.json, report.md, figures."""
    from geovq.stages import compare

    run_stage(g, compare.run)


PresetOption = setting("study.preset", "--preset", panel=GLOBAL)


@command("run", without=("force",))
def run_command(
    g: Globals,
    preset: PresetOption = None,
    force: setting(
        "study.redo",
        "--force",
        help="Redo a stage family and what follows it (repeatable).",
        panel=GLOBAL,
        metavar="<STAGE>",
    ) = None,
    dataset: Dataset = None,
    limit: Limit = None,
    data_dir: DataDir = None,
    download: Download = None,
    image_size: ImageSize = None,
    channels: Channels = None,
    trunk: setting("vae.trunk") = None,
    k: setting("quantize.k", also=("vqvae.k",), help="K for post-hoc and VQ-VAE codebooks.") = None,
    log: Curves = None,
) -> None:
    """The whole study: VAEs, quantizations, refits, VQ-VAEs, priors, samples, compare."""
    from geovq.stages import pipeline

    run_stage(g, pipeline.run, presets=pipeline.PRESETS)


@command("info")
def info_command(g: Globals) -> None:
    """Summarise the run directory: stages, key figures, artifacts, currency."""
    from geovq.stages import info

    run_stage(g, info.run)


config_app = typer.Typer(
    help="The settings: what is in effect and why, or a geovq.toml to start from.",
    no_args_is_help=True,
)
app.add_typer(config_app, name="config")


@command("show", group=config_app)
def config_show_command(g: Globals, preset: PresetOption = None) -> None:
    """Every setting with its value and its source: default, preset, config file and key,
    environment variable, flag or --set."""
    from geovq.stages import config
    from geovq.stages.pipeline import PRESETS

    run_stage(g, config.show, presets=PRESETS if preset else None)


@command("init", group=config_app)
def config_init_command(g: Globals) -> None:
    """Write a commented RUN/geovq.toml that restates every default (--force replaces one)."""
    from geovq.stages import config

    run_stage(g, config.init)


def main() -> None:
    signals.install()
    try:
        app()
    except SystemExit as done:
        signals.ignore()  # the command is over: a late signal has nothing left to stop
        distributed.exit_process(done.code)  # after torchrun, skip torch's shutdown
        raise
