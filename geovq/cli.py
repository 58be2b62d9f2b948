"""The ``geovq`` command line: flags -> settings -> a stage -> a table or JSON. No logic here.

Every subcommand takes the global options (``--run-dir``, ``--config``, ``--device``,
``--seed``, ``--force``, ``--quiet``, ``--json``). Options default to None and only flags the
user typed become overrides, so a config file or the environment is never silently beaten by
an unset flag's default.
"""

import functools
import inspect
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from geovq import GeovqError, Interrupted
from geovq.progress import make_progress
from geovq.settings import load_settings
from geovq.stages.record import StageResult

app = typer.Typer(
    name="geovq",
    help="A-posteriori vector quantization of learned latent spaces.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


@dataclass
class Globals:
    run_dir: Path | None
    config: Path | None
    device: str | None
    seed: int | None
    force: bool | None
    quiet: bool | None
    json: bool | None


_GLOBAL_OPTIONS = [
    (
        "run_dir",
        Path | None,
        typer.Option("--run-dir", help="Run directory [default: runs/default]."),
    ),
    (
        "config",
        Path | None,
        typer.Option("--config", help="TOML config [default: RUN/geovq.toml]."),
    ),
    ("device", str | None, typer.Option("--device", help="auto | cpu | cuda [default: auto].")),
    ("seed", int | None, typer.Option("--seed", help="Random seed [default: 0].")),
    ("force", bool | None, typer.Option("--force", help="Overwrite, or use changed inputs.")),
    ("quiet", bool | None, typer.Option("--quiet", "-q", help="No progress or logs.")),
    ("json", bool | None, typer.Option("--json", help="Print the result as one JSON object.")),
]


def command(name: str, without: tuple[str, ...] = ()) -> Callable:
    """Register ``fn(g: Globals, **options)`` as subcommand ``name`` with the global options,
    except those in ``without`` (which the command defines its own way)."""

    def register(fn: Callable) -> Callable:
        signature = inspect.signature(fn)
        own = [p for p in signature.parameters.values() if p.name != "g"]
        extra = [
            inspect.Parameter(
                n, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[t, o]
            )
            for n, t, o in _GLOBAL_OPTIONS
            if n not in without
        ]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> None:
            values = {n: None if n in without else kwargs.pop(n) for n, _, _ in _GLOBAL_OPTIONS}
            fn(Globals(**values), **kwargs)

        wrapper.__signature__ = signature.replace(parameters=own + extra)
        wrapper.__annotations__ = {p.name: p.annotation for p in own + extra}
        app.command(name, help=inspect.getdoc(fn))(wrapper)
        return fn

    return register


def _prune(tree: dict[str, Any]) -> dict[str, Any]:
    """Drop unset (None) options, and sections left empty."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            value = _prune(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out


def run_stage(
    g: Globals,
    stage: Callable[..., StageResult],
    overrides: dict[str, Any],
    preset: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """Build settings, run the stage, print its result; user errors become one stderr line."""
    top = {"run_dir": g.run_dir, "device": g.device, "seed": g.seed, "force": g.force}
    quiet = bool(g.quiet or g.json)
    progress = make_progress(quiet)
    try:
        values = preset() if preset else None
        settings = load_settings(_prune({**top, **overrides}), config=g.config, preset=values)
        result = stage(settings, progress)
    except GeovqError as error:
        progress.close()
        _fail(str(error), EXIT_USER_ERROR)
    except Interrupted as error:
        progress.close()
        _fail(str(error), EXIT_INTERRUPTED)
    progress.close()
    _print_result(result, as_json=bool(g.json))


def _fail(message: str, code: int) -> None:
    if os.environ.get("GEOVQ_DEBUG") == "1":
        raise
    print(f"geovq: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _print_result(result: StageResult, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result.to_json(), default=str) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=result.title or result.stage)
    for column in result.columns:
        table.add_column(column)
    for row in result.rows:
        table.add_row(*[str(cell) for cell in row])
    # Piped output has no terminal width; don't squeeze a wide table into 80 columns.
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    console = Console(width=160 if wide else None)
    console.print(table)
    for note in result.notes:
        console.print(note, highlight=False, markup=False)


# -- option types ------------------------------------------------------------------------------
Dataset = Annotated[
    str | None,
    typer.Option("--dataset", help="mnist5k | mnist | fashion-mnist | cifar10 | folder:PATH."),
]
Limit = Annotated[
    int | None, typer.Option("--limit", help="First N images per split (stratified).")
]
DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Where downloadable datasets live.")
]
Download = Annotated[
    bool | None, typer.Option("--download", help="Download the dataset if missing.")
]
ImageSize = Annotated[
    int | None, typer.Option("--image-size", help="Resize folder images to N x N.")
]
Channels = Annotated[
    int | None, typer.Option("--channels", help="1 (grayscale) or 3 (RGB) for folders.")
]
Epochs = Annotated[int | None, typer.Option("--epochs", help="Training epochs.")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="Batch size.")]
LearningRate = Annotated[float | None, typer.Option("--lr", help="Adam learning rate.")]
Resume = Annotated[bool | None, typer.Option("--resume", help="Continue from the last checkpoint.")]
Vae = Annotated[
    str | None, typer.Option("--vae", help="Name of one of several VAEs in the run (e.g. spatial).")
]


def _data(dataset, limit, data_dir, download, image_size, channels) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "limit": limit,
        "data_dir": data_dir,
        "download": download,
        "image_size": image_size,
        "channels": channels,
    }


# -- commands ----------------------------------------------------------------------------------
@command("train-vae")
def train_vae_command(
    g: Globals,
    dataset: Dataset = None,
    limit: Limit = None,
    data_dir: DataDir = None,
    download: Download = None,
    image_size: ImageSize = None,
    channels: Channels = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    beta: Annotated[float | None, typer.Option("--beta", help="KL weight.")] = None,
    recon_loss: Annotated[
        str | None, typer.Option("--recon-loss", help="auto | bce | mse.")
    ] = None,
    latent: Annotated[str | None, typer.Option("--latent", help="flat | spatial.")] = None,
    latent_dim: Annotated[
        int | None, typer.Option("--latent-dim", help="Flat latent size.")
    ] = None,
    spatial_channels: Annotated[
        int | None, typer.Option("--spatial-channels", help="Channels per position (spatial).")
    ] = None,
    resume: Resume = None,
    vae_name: Vae = None,
) -> None:
    """Train the continuous convolutional VAE."""
    from geovq.stages import train_vae

    vae = {
        "name": vae_name,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "beta": beta,
        "recon_loss": recon_loss,
        "latent": latent,
        "latent_dim": latent_dim,
        "spatial_channels": spatial_channels,
        "resume": resume,
    }
    data = _data(dataset, limit, data_dir, download, image_size, channels)
    run_stage(g, train_vae.run, {"data": data, "vae": vae})


@command("extract")
def extract_command(
    g: Globals,
    dataset: Dataset = None,
    limit: Limit = None,
    data_dir: DataDir = None,
    download: Download = None,
    image_size: ImageSize = None,
    channels: Channels = None,
    as_name: Annotated[
        str | None, typer.Option("--as", help="Encode --dataset as one more split NAME.")
    ] = None,
    batch_size: BatchSize = None,
    vae_name: Vae = None,
) -> None:
    """Encode every split with the trained VAE into latents (mu, log sigma^2)."""
    from geovq.stages import extract

    data = _data(dataset, limit, data_dir, download, image_size, channels)
    if as_name is None and _prune(data):
        _fail("--dataset and other data options need --as NAME with extract", EXIT_USER_ERROR)
    options = {"as_name": as_name, "batch_size": batch_size}
    run_stage(g, extract.run, {"data": data, "extract": options, "vae": {"name": vae_name}})


K = Annotated[int | None, typer.Option("--k", help="Codebook size K.")]
Name = Annotated[str | None, typer.Option("--name", help="Name of the result folder.")]


@command("quantize")
def quantize_command(
    g: Globals,
    metric: Annotated[
        str | None, typer.Option("--metric", help="euclidean | w2 | geodesic [w2].")
    ] = None,
    k: K = None,
    chunks: Annotated[int | None, typer.Option("--chunks", help="Chunks per latent L.")] = None,
    grid: Annotated[str | None, typer.Option("--grid", help="Code grid HxW, H*W = L.")] = None,
    codebook: Annotated[
        str | None, typer.Option("--codebook", help="shared | per-position.")
    ] = None,
    name: Name = None,
    fit_split: Annotated[str | None, typer.Option("--fit-split", help="Split to fit on.")] = None,
    restarts: Annotated[int | None, typer.Option("--restarts", help="k-means restarts.")] = None,
    iters: Annotated[int | None, typer.Option("--iters", help="Max iterations.")] = None,
    tol: Annotated[float | None, typer.Option("--tol", help="Relative tolerance.")] = None,
    knn: Annotated[int | None, typer.Option("--knn", help="Graph neighbours (geodesic).")] = None,
    edge_weight: Annotated[
        str | None, typer.Option("--edge-weight", help="w2 | w2sq (geodesic edges).")
    ] = None,
    assign: Annotated[
        str | None, typer.Option("--assign", help="geodesic | w2 (codes off the fit split).")
    ] = None,
    refit_decoder: Annotated[
        bool | None, typer.Option("--refit-decoder", help="Then refit the decoder on the codes.")
    ] = None,
    vae_name: Vae = None,
) -> None:
    """Cluster latent chunks into a codebook after training; codes for every split."""
    from geovq.stages import quantize

    options = {
        "metric": metric,
        "k": k,
        "chunks": chunks,
        "grid": grid,
        "codebook": codebook,
        "name": name,
        "fit_split": fit_split,
        "restarts": restarts,
        "iters": iters,
        "tol": tol,
        "knn": knn,
        "edge_weight": edge_weight,
        "assign": assign,
        "refit_decoder": refit_decoder,
    }
    run_stage(g, quantize.run, {"quantize": options, "vae": {"name": vae_name}})


@command("refit-decoder")
def refit_decoder_command(
    g: Globals,
    source: Annotated[str | None, typer.Option("--source", help="quant/<name>.")] = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    resume: Resume = None,
) -> None:
    """Fine-tune the VAE decoder on a post-hoc quantization's fixed codes."""
    from geovq.stages import refit_decoder

    refit = {
        "source": source,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "resume": resume,
    }
    run_stage(g, refit_decoder.run, {"refit": refit})


@command("train-vqvae")
def train_vqvae_command(
    g: Globals,
    grid: Annotated[str | None, typer.Option("--grid", help="Code grid HxW: 7x7 or 2x4.")] = None,
    k: K = None,
    codebook_dim: Annotated[int | None, typer.Option("--codebook-dim", help="C.")] = None,
    beta: Annotated[float | None, typer.Option("--beta", help="Commitment weight.")] = None,
    codebook_update: Annotated[
        str | None, typer.Option("--codebook-update", help="loss | ema.")
    ] = None,
    ema_decay: Annotated[float | None, typer.Option("--ema-decay", help="EMA decay.")] = None,
    dead_code_restart: Annotated[
        int | None, typer.Option("--dead-code-restart", help="Steps unused before a restart.")
    ] = None,
    init: Annotated[str | None, typer.Option("--init", help="random | kmeans.")] = None,
    name: Name = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    resume: Resume = None,
    dataset: Dataset = None,
    limit: Limit = None,
    data_dir: DataDir = None,
    download: Download = None,
    image_size: ImageSize = None,
    channels: Channels = None,
) -> None:
    """Train the end-to-end VQ-VAE baseline on the run's data and trunks."""
    from geovq.stages import train_vqvae

    vqvae = {
        "grid": grid,
        "k": k,
        "codebook_dim": codebook_dim,
        "beta": beta,
        "codebook_update": codebook_update,
        "ema_decay": ema_decay,
        "dead_code_restart": dead_code_restart,
        "init": init,
        "name": name,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "resume": resume,
    }
    data = _data(dataset, limit, data_dir, download, image_size, channels)
    run_stage(g, train_vqvae.run, {"data": data, "vqvae": vqvae})


Source = Annotated[str | None, typer.Option("--source", help="quant/<name> or vqvae/<name>.")]


@command("train-prior")
def train_prior_command(
    g: Globals,
    source: Source = None,
    layers: Annotated[int | None, typer.Option("--layers", help="Gated layers.")] = None,
    hidden: Annotated[int | None, typer.Option("--hidden", help="Channels per layer.")] = None,
    conditional: Annotated[
        bool | None, typer.Option("--conditional", help="Condition on the class label.")
    ] = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    resume: Resume = None,
) -> None:
    """Train a gated PixelCNN prior over a source's code grids."""
    from geovq.stages import train_prior

    prior = {
        "source": source,
        "layers": layers,
        "hidden": hidden,
        "conditional": conditional,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "resume": resume,
    }
    run_stage(g, train_prior.run, {"prior": prior})


@command("sample")
def sample_command(
    g: Globals,
    source: Source = None,
    mode: Annotated[str | None, typer.Option("--mode", help="prior | random | vae.")] = None,
    n: Annotated[int | None, typer.Option("--n", help="Number of images [64].")] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", help="Softmax temperature (> 0).")
    ] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Keep the k best (0 = off).")] = None,
    class_label: Annotated[
        int | None, typer.Option("--class", help="Class for a conditional prior.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="PNG path.")] = None,
    vae_name: Vae = None,
) -> None:
    """Generate images: prior -> codes -> decoder (or random codes, or the VAE)."""
    from geovq.stages import sample

    options = {
        "source": source,
        "mode": mode,
        "n": n,
        "temperature": temperature,
        "top_k": top_k,
        "class_label": class_label,
        "out": out,
    }
    run_stage(g, sample.run, {"sample": options, "vae": {"name": vae_name}})


@command("compare")
def compare_command(
    g: Globals,
    split: Annotated[
        str | None, typer.Option("--split", help="Split of the headline table.")
    ] = None,
    sweep_k: Annotated[
        str | None, typer.Option("--sweep-k", help="Rate-distortion Ks, e.g. 16,64,256,1024.")
    ] = None,
    samples: Annotated[
        int | None, typer.Option("--samples", help="Samples per source for sample quality.")
    ] = None,
    classifier_epochs: Annotated[
        int | None, typer.Option("--classifier-epochs", help="Epochs of the judging classifier.")
    ] = None,
) -> None:
    """Evaluate every quantization side by side: table, report/metrics.json, report.md, figures."""
    from geovq.stages import compare

    options = {
        "split": split,
        "sweep_k": sweep_k,
        "samples": samples,
        "classifier_epochs": classifier_epochs,
    }
    run_stage(g, compare.run, {"compare": options})


@command("run", without=("force",))
def run_command(
    g: Globals,
    preset: Annotated[
        str | None, typer.Option("--preset", help="quick | default | full [default].")
    ] = None,
    force: Annotated[
        list[str] | None,
        typer.Option("--force", help="Redo a stage family and what depends on it (repeatable)."),
    ] = None,
    dataset: Dataset = None,
    limit: Limit = None,
    data_dir: DataDir = None,
    download: Download = None,
    k: Annotated[
        int | None, typer.Option("--k", help="K for post-hoc and VQ-VAE codebooks.")
    ] = None,
) -> None:
    """The whole study: VAEs, quantizations, refits, VQ-VAEs, priors, samples, compare."""
    from geovq.stages import pipeline

    data = _data(dataset, limit, data_dir, download, None, None)
    overrides = {
        "data": data,
        "quantize": {"k": k},
        "vqvae": {"k": k},
        "study": {"redo": force},
    }
    run_stage(
        g, pipeline.run, overrides, preset=lambda: pipeline.preset_values(preset or "default")
    )


@command("info")
def info_command(g: Globals) -> None:
    """Summarise the run directory: stages, key figures, artifacts, currency."""
    from geovq.stages import info

    run_stage(g, info.run, {})


def main() -> None:
    app()
