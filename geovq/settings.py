"""One typed settings object for every stage.

Sources, lowest first: defaults < TOML config (``geovq.toml`` in the run directory, or
``--config``) < environment (``GEOVQ_VAE__EPOCHS=5``) < command-line flags. Validation lives
here so the CLI, the Python API and the config file all get the same errors.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from geovq import GeovqError
from geovq.names import check_name, parse_source

CONFIG_NAME = "geovq.toml"
_GRID = re.compile(r"^(\d+)x(\d+)$")

# ``geovq run``'s stage families, in pipeline order (``--force STAGE`` redoes one).
StageFamily = Literal[
    "train-vae",
    "extract",
    "quantize",
    "refit-decoder",
    "train-vqvae",
    "train-prior",
    "sample",
    "compare",
]
# ``geovq run --preset``: named value sets just above the defaults (geovq/stages/pipeline.py).
Preset = Literal["quick", "default", "fashion", "full"]
Metric = Literal["euclidean", "w2", "geodesic", "scalar", "transform"]


def parse_grid(text: str) -> tuple[int, int]:
    """'2x4' -> (2, 4); GeovqError for anything else."""
    match = _GRID.match(text.strip()) if isinstance(text, str) else None
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise GeovqError(f"grid {text!r} is not of the form HxW with H, W >= 1 (e.g. 2x4)")
    return int(match[1]), int(match[2])


def _check_grid(text: str) -> None:
    """parse_grid for a validator: a ValueError, so the error names where the value came from."""
    try:
        parse_grid(text)
    except GeovqError as error:
        raise ValueError(str(error)) from None


def format_value(value: Any) -> str:
    """A value as a user types it on the command line: ``false``, ``w2``, ``euclidean,w2``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return ",".join(format_value(v) for v in value) or "none"
    return str(value)


def literal_choices(annotation: Any) -> tuple[Any, ...]:
    """The values of a Literal, also inside ``X | None`` or ``list[...]``; () for none."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    for arg in get_args(annotation):
        if found := literal_choices(arg):
            return found
    return ()


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSettings(Section):
    dataset: str = Field(
        "mnist5k", description="mnist5k | mnist | fashion-mnist | cifar10 | folder:PATH."
    )
    limit: int | None = Field(
        None, ge=1, description="At most N images per split (the first N, class-balanced)."
    )
    data_dir: Path | None = Field(None, description="Where downloadable datasets live.")
    download: bool = Field(False, description="Download the dataset if missing.")
    image_size: int | None = Field(
        None, ge=4, description="Resize (shorter side) and centre-crop folder images to N x N."
    )
    channels: Literal[1, 3] | None = Field(
        None, description="1 (grayscale) or 3 (RGB) for image folders."
    )


class TrainSettings(Section):
    """Knobs shared by every training stage."""

    epochs: int = Field(20, ge=1, description="Training epochs.")
    batch_size: int = Field(128, ge=1, description="Batch size.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    resume: bool = Field(False, description="Continue from the last checkpoint.")


def _check_name(value: str | None) -> str | None:
    """Names become paths in the run directory: one rule for all (``geovq.names``)."""
    if value is not None:
        try:
            check_name(value, "the name")
        except GeovqError as error:
            raise ValueError(str(error)) from None
    return value


def _check_source(value: str | None) -> str | None:
    """``quant/<name>`` or ``vqvae/<name>``, the name under the same rule."""
    if value is not None:
        try:
            parse_source(value, "the source")
        except GeovqError as error:
            raise ValueError(str(error)) from None
    return value


class VaeSettings(TrainSettings):
    # Several VAEs per run: vae-NAME.safetensors, latents-NAME.safetensors, ...
    name: str | None = Field(None, description="Name of one of several VAEs in the run.")
    beta: float = Field(1.0, ge=0, description="KL weight (the start, with --target-rate).")
    target_rate: float | None = Field(
        None, gt=0, description="Drive the KL to this many bits per image by adapting beta."
    )
    rate_gain: float = Field(0.05, gt=0, description="Step of log beta per batch (target rate).")
    rate_chunks: int | None = Field(
        None,
        ge=1,
        description="Hold --target-rate per chunk: L equal chunks of the latent (positions, "
        "spatial), one beta each, KL target/L each.",
    )
    free_bits: float = Field(0.0, ge=0, description="KL floor per latent dimension, nats.")
    recon_loss: Literal["auto", "bce", "mse"] = Field(
        "auto", description="Reconstruction loss (auto: bce for grayscale, mse for RGB)."
    )
    latent: Literal["flat", "spatial"] = Field("flat", description="Latent layout.")
    latent_dim: int = Field(32, ge=1, description="Flat latent size.")
    spatial_channels: int = Field(4, ge=1, description="Channels per position (spatial).")
    # Encoder/decoder trunk (geovq.models.blocks): the reference's, or residual blocks for RGB.
    trunk: Literal["reference", "residual"] = Field(
        "reference", description="Encoder/decoder trunk (residual: stronger, for RGB)."
    )

    _name = field_validator("name")(_check_name)


class ExtractSettings(Section):
    as_name: str | None = Field(None, description="Encode --dataset as one more split NAME.")
    batch_size: int = Field(512, ge=1, description="Batch size.")

    _as_name = field_validator("as_name")(_check_name)


class QuantizeSettings(Section):
    metric: Metric = Field(
        "w2",
        description="Distance between latent chunks (transform: code the whole latent, "
        "L log2 K bits, on its principal axes).",
    )
    k: int = Field(256, ge=1, description="Codebook size K.")
    levels: tuple[int, ...] | None = Field(
        None, description="Scalar: levels per chunk dimension, e.g. 4,4,4,4 (default: K split)."
    )
    codeword: Literal["medoid", "barycenter"] = Field(
        "medoid", description="Geodesic cells' codewords: medoid or W2 barycenter."
    )
    chunks: int | None = Field(None, ge=1, description="Chunks per latent L (default: auto).")
    grid: str | None = Field(None, description="Code grid HxW with H*W = L (default: auto).")
    codebook: Literal["shared", "per-position"] = Field(
        "shared", description="One codebook, or one per chunk position."
    )
    name: str | None = Field(None, description="Name of the result folder (default: METRIC-kK).")
    fit_split: str = Field("train", description="Split to fit the codebook on.")
    restarts: int = Field(3, ge=1, description="k-means restarts.")
    iters: int = Field(100, ge=1, description="Max iterations.")
    tol: float = Field(1e-4, ge=0, description="Relative tolerance.")
    knn: int = Field(10, ge=1, description="Graph neighbours (geodesic).")
    edge_weight: Literal["w2", "w2sq"] = Field("w2", description="Geodesic graph edge length.")
    assign: Literal["geodesic", "w2"] = Field(
        "geodesic", description="How geodesic codes are assigned off the fit split."
    )
    refit_decoder: bool = Field(False, description="Then refit the decoder on the codes.")

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: str | None) -> str | None:
        if value is not None:
            _check_grid(value)
        return value

    _name = field_validator("name")(_check_name)
    _levels = field_validator("levels", mode="before")(lambda value: _parse_levels(value, 1))


def _parse_levels(value: Any, minimum: int) -> tuple[int, ...] | None:
    """'4,4,4,4' or a sequence -> (4, 4, 4, 4), every level >= ``minimum``; None stays None."""
    if value is None:
        return None
    try:
        parts = value.split(",") if isinstance(value, str) else list(value)
        levels = tuple(int(part) for part in parts if str(part).strip())
    except (TypeError, ValueError):
        levels = ()
    if not levels or min(levels) < minimum:
        raise ValueError(
            f"{value!r} is not a comma-separated list of levels >= {minimum} (e.g. 4,4,4,4)"
        )
    return levels


class RefitSettings(TrainSettings):
    source: str | None = Field(None, description="quant/<name>.")
    epochs: int = Field(5, ge=1, description="Training epochs.")
    lr: float = Field(5e-4, gt=0, description="Adam learning rate.")

    _source = field_validator("source")(_check_source)


class VqvaeSettings(TrainSettings):
    grid: str = Field("7x7", description="Code grid HxW (2x4 matches the flat VAE's rate).")
    quantizer: Literal["vq", "fsq"] = Field(
        "vq", description="vq: learned codebook; fsq: finite scalar quantization (--levels)."
    )
    levels: tuple[int, ...] = Field(
        (8, 8, 4), description="FSQ levels per channel (K = their product, 8,8,4 = 256)."
    )
    k: int = Field(256, ge=1, description="Codebook size K.")
    codebook_dim: int = Field(4, ge=1, description="Codeword size C.")
    beta: float = Field(0.25, ge=0, description="Commitment weight.")
    codebook_update: Literal["loss", "ema"] = Field(
        "ema", description="How codewords learn: codebook loss or EMA."
    )
    ema_decay: float = Field(0.99, gt=0, lt=1, description="EMA decay.")
    dead_code_restart: int = Field(
        100, ge=0, description="Steps unused before a codeword restarts (0 = never)."
    )
    init: Literal["random", "kmeans"] = Field("kmeans", description="Codebook initialisation.")
    recon_loss: Literal["auto", "bce", "mse"] = Field(
        "auto", description="Reconstruction loss (auto: bce for grayscale, mse for RGB)."
    )
    name: str | None = Field(None, description="Name of the result folder (default: vqvae-HxW-kK).")
    # None: the trunk of the run's first trained model, so the baseline's capacity matches.
    trunk: Literal["reference", "residual"] | None = Field(
        None, description="Encoder/decoder trunk (default: the run's VAE's)."
    )

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: str) -> str:
        _check_grid(value)
        return value

    _name = field_validator("name")(_check_name)
    _levels = field_validator("levels", mode="before")(lambda value: _parse_levels(value, 3))


class PriorSettings(TrainSettings):
    source: str | None = Field(None, description="quant/<name> or vqvae/<name>.")
    epochs: int = Field(15, ge=1, description="Training epochs.")
    layers: int = Field(6, ge=1, description="Gated layers.")
    hidden: int = Field(64, ge=1, description="Channels per layer.")
    conditional: bool = Field(False, description="Condition on the class label.")

    _source = field_validator("source")(_check_source)


class SampleSettings(Section):
    source: str | None = Field(None, description="quant/<name> or vqvae/<name>.")
    mode: Literal["prior", "random", "vae"] = Field(
        "prior", description="Codes from the prior, uniformly random codes, or the plain VAE."
    )
    n: int = Field(64, ge=1, description="Number of images.")
    temperature: float = Field(1.0, gt=0, description="Softmax temperature (> 0).")
    top_k: int = Field(0, ge=0, description="Keep the k most likely codes (0 = off).")
    class_label: int | None = Field(None, ge=0, description="Class for a conditional prior.")
    out: Path | None = Field(None, description="PNG path (default: RUN/samples/...).")

    _source = field_validator("source")(_check_source)


class CompareSettings(Section):
    split: str = Field("test", description="Split of the headline table.")
    sweep_k: str | None = Field(None, description="Rate-distortion Ks, e.g. 16,64,256,1024.")
    classifier_epochs: int = Field(3, ge=1, description="Epochs of the judging classifier.")
    samples: int = Field(500, ge=2, description="Samples per source for sample quality.")
    rate: Literal["both", "nominal", "prior"] = Field(
        "both",
        description="Rate of the rate-distortion figure: L log2 K bits, the prior's NLL, or both.",
    )

    @field_validator("sweep_k")
    @classmethod
    def _sweep_k(cls, value: str | None) -> str | None:
        if value is not None:
            parse_k_list(value)
        return value


def parse_k_list(text: str) -> list[int]:
    """'16,64,256' -> [16, 64, 256]; every K an integer >= 1."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(
            f"{text!r} is not a comma-separated list of integers >= 1 (e.g. 16,64,256)"
        )
    return sorted(set(values))


class StudySettings(Section):
    """What ``geovq run`` includes beyond each stage's own settings."""

    metrics: list[Metric] = Field(
        ["euclidean", "w2", "geodesic", "scalar", "transform"],
        description="Post-hoc metrics on the flat VAE.",
    )
    spatial: bool = Field(True, description="Also train a spatial VAE and quantize it.")
    spatial_metrics: list[Metric] = Field(
        ["w2", "geodesic", "scalar", "transform"],
        description="Post-hoc metrics on the spatial VAE.",
    )
    geodesic_codewords: list[Literal["medoid", "barycenter"]] = Field(
        ["medoid", "barycenter"], description="Codewords of each geodesic quantization."
    )
    flat_target_rate: float | None = Field(
        64.0, gt=0, description="KL target of the flat VAE, bits per image (its 2x4 code's)."
    )
    spatial_target_rate: float | None = Field(
        392.0, gt=0, description="KL target of the spatial VAE, bits per image."
    )
    spatial_rate_per_position: bool = Field(
        True, description="Hold the spatial VAE's target per position (vae.rate_chunks)."
    )
    spatial_channels: int = Field(2, ge=1, description="Channels per position, spatial VAE.")
    # A transform code gains from more dimensions at the same KL (it rotates them and spends
    # the bits where the variance is); chunk codebooks lose from them (8 bits per 4-d chunk).
    transform_channels: int = Field(
        4,
        ge=1,
        description="Channels per position of the spatial VAE the transform code quantizes "
        "(a second spatial VAE, spatialN, unless it is spatial_channels).",
    )
    equal_epochs: bool = Field(
        True, description="End-to-end models train VAE epochs + refit epochs."
    )
    fsq: bool = Field(True, description="An FSQ model beside each VQ-VAE grid.")
    # Same bits, L x the codewords.
    per_position_metrics: list[Metric] = Field(
        [], description="Metrics also fitted with one codebook per position."
    )
    # "trunk" is the trunk's feature map (7x7 for 28x28 images, 8x8 for 32x32): the grid of the
    # spatial VAE's codes, so the two pair at equal bits.
    vqvae_grids: list[str] = Field(
        ["2x4", "trunk"], description="End-to-end VQ-VAE code grids (trunk: the trunk's map)."
    )
    refit: bool = Field(True, description="Refit the decoder on post-hoc codes.")
    priors: bool = Field(True, description="Train priors and sample from them.")
    redo: list[StageFamily] = Field([], description="Stage families to redo, and what follows.")
    preset: Preset = Field(
        "default", description="Named settings geovq run starts from (below every other source)."
    )

    @field_validator("vqvae_grids")
    @classmethod
    def _grids(cls, values: list[str]) -> list[str]:
        for value in values:
            if value != "trunk":
                _check_grid(value)
        return values


class Settings(BaseSettings):
    """Every stage's settings plus the globals; see the module docstring for precedence."""

    model_config = SettingsConfigDict(
        env_prefix="GEOVQ_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    run_dir: Path = Field(Path("runs/default"), description="Run directory.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to compute.")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Random seed (0 .. 2^63-1).")
    force: bool = Field(False, description="Overwrite, or use changed inputs.")
    log: Literal["jsonl", "tensorboard"] = Field(
        "jsonl",
        description="Training curves: RUN/logs/STAGE.jsonl always; tensorboard adds event files"
        " under RUN/logs/tb/STAGE/ (pip install 'geovq[tensorboard]').",
    )
    data: DataSettings = DataSettings()
    vae: VaeSettings = VaeSettings()
    extract: ExtractSettings = ExtractSettings()
    quantize: QuantizeSettings = QuantizeSettings()
    refit: RefitSettings = RefitSettings()
    vqvae: VqvaeSettings = VqvaeSettings()
    prior: PriorSettings = PriorSettings()
    sample: SampleSettings = SampleSettings()
    compare: CompareSettings = CompareSettings()
    study: StudySettings = StudySettings()
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)  # path -> where it came from

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: flags and --set (init) > environment > TOML file > preset > defaults.
        toml = _toml.get() or _PresetSource(settings_cls, {})
        return (init_settings, env_settings, toml, _PresetSource(settings_cls, _preset.get()))


# The TOML source and the preset of the ``load_settings`` call in progress.
_toml: ContextVar[TomlConfigSettingsSource | None] = ContextVar("geovq_toml", default=None)
_preset: ContextVar[dict[str, Any] | None] = ContextVar("geovq_preset", default=None)

# GEOVQ_ environment variables that are not settings.
ENV_NOT_SETTINGS = {"GEOVQ_DEBUG", "GEOVQ_FAULT_INJECT"}
ENV_PREFIX = "GEOVQ_"


class _PresetSource(PydanticBaseSettingsSource):
    """Fixed values (a ``geovq run --preset``): just above the defaults, below everything else."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any] | None) -> None:
        super().__init__(settings_cls)
        self.values = values or {}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return self.values


def setting_paths(model: type[BaseModel] | None = None, prefix: str = "") -> dict[str, FieldInfo]:
    """Every leaf setting by dotted path (``"quantize.k"``), in declaration order."""
    found: dict[str, FieldInfo] = {}
    for name, info in (model or Settings).model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            found.update(setting_paths(info.annotation, f"{prefix}{name}."))
        else:
            found[prefix + name] = info
    return found


def env_name(path: str) -> str:
    """``quantize.k`` -> ``GEOVQ_QUANTIZE__K``."""
    return ENV_PREFIX + path.upper().replace(".", "__")


def _suggest(wrong: str, known: list[str]) -> str:
    close = difflib.get_close_matches(wrong, known, n=1)
    return f"did you mean {close[0]}?" if close else "remove it or check its spelling"


def _environment_paths(environ: dict[str, str]) -> dict[str, str]:
    """Settings path -> the GEOVQ_ variable that sets it; GeovqError for an unknown one."""
    paths = list(setting_paths())
    known = {env_name(p): p for p in paths}
    known.update({env_name(p.split(".")[0]): p.split(".")[0] for p in paths})
    found = {}
    for name in environ:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in ENV_NOT_SETTINGS:
            continue
        if upper not in known:
            hint = _suggest(upper, [*known, *ENV_NOT_SETTINGS])
            raise GeovqError(f"unknown environment variable {name}; {hint}")
        found[known[upper]] = name
    return found


def parse_assignment(text: str) -> tuple[str, Any]:
    """``--set SECTION.FIELD=VALUE`` -> (path, value); a list setting takes commas (``a,b``).
    The value stays text: the model validates it as it does an environment variable."""
    path, sep, value = text.partition("=")
    path = path.strip()
    fields = setting_paths()
    if not sep or not path:
        raise GeovqError(f"--set {text!r} is not SECTION.FIELD=VALUE (e.g. --set vae.epochs=5)")
    if path not in fields:
        raise GeovqError(f"--set {text}: unknown setting {path!r}; {_suggest(path, list(fields))}")
    if get_origin(fields[path].annotation) is list:
        return path, [part.strip() for part in value.split(",") if part.strip()]
    return path, value.strip()


def _leaves(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.extend(_leaves(value, f"{prefix}{key}."))
        else:
            out.append(prefix + key)
    return out


def put_setting(tree: dict[str, Any], path: str, value: Any) -> None:
    """Set dotted ``path`` in a nested dict of overrides."""
    *sections, name = path.split(".")
    for section in sections:
        tree = tree.setdefault(section, {})
    tree[name] = value


def load_settings(
    overrides: dict[str, Any] | None = None,
    config: Path | None = None,
    preset: dict[str, Any] | None = None,
    *,
    assignments: list[str] | tuple[str, ...] = (),
    origins: dict[str, str] | None = None,
    preset_name: str | None = None,
    presets: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    """Build Settings from every source; ``overrides`` are nested flags the user actually set
    (``origins`` names each one's flag), ``assignments`` are ``--set PATH=VALUE`` texts.

    The TOML file is ``config`` if given, else ``geovq.toml`` in the run directory (which
    itself may come from the flags or the environment). Any error names the source of the
    bad value: the flag, the environment variable, or the file and key. The result's
    ``sources`` maps every set path to where its value came from. With ``presets`` (name ->
    values), the preset named by ``study.preset`` (from any source) lies under the rest.
    """
    if presets is not None:
        chosen = load_settings(overrides, config, assignments=assignments, origins=origins)
        name = chosen.study.preset
        return load_settings(
            overrides,
            config,
            presets[name],
            assignments=assignments,
            origins=origins,
            preset_name=name,
        )
    overrides = copy.deepcopy(overrides or {})
    labels = {path: "the overrides argument" for path in _leaves(overrides)} | dict(origins or {})
    for text in assignments:
        path, value = parse_assignment(text)
        put_setting(overrides, path, value)
        labels[path] = f"--set {text}"
    if config is not None and not Path(config).is_file():
        raise GeovqError(f"config file {config} does not exist; pass an existing --config path")
    environment = _environment_paths(dict(os.environ))
    if config is None:
        config = _default_config(overrides)
    toml = _read_toml(Path(config)) if config else None
    sources = {p: f"preset {preset_name or ''}".strip() for p in _leaves(preset or {})}
    if toml is not None:
        sources |= {p: f"config file {config} (key {p})" for p in _leaves(toml.toml_data)}
    sources |= {p: f"environment variable {name}" for p, name in environment.items()}
    sources |= labels
    toml_token = _toml.set(toml)
    preset_token = _preset.set(preset or {})
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        raise GeovqError(_describe(error, sources)) from None
    except SettingsError as error:  # a GEOVQ_* variable that is not valid JSON for its field
        cause = f" ({error.__cause__})" if error.__cause__ else ""
        raise GeovqError(
            f"{error}{cause}; fix the GEOVQ_ environment variable (sections take JSON, "
            "e.g. GEOVQ_STUDY__METRICS='[\"w2\"]')"
        ) from None
    finally:
        _toml.reset(toml_token)
        _preset.reset(preset_token)
    settings._sources = sources
    return settings


def source_of(settings: Settings, path: str) -> str:
    """Where ``path``'s value came from: a flag, ``--set``, an environment variable, a config
    file and key, a preset, or ``default``."""
    return _lookup(settings._sources, path) or "default"


def _lookup(sources: dict[str, str], path: str) -> str | None:
    """The source of ``path`` or of the nearest section above it that a source set whole."""
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        found = sources.get(".".join(parts[:end]))
        if found:
            return found
    return None


def _read_toml(path: Path) -> TomlConfigSettingsSource:
    try:
        toml = TomlConfigSettingsSource(Settings, toml_file=path)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise GeovqError(f"config file {path} is not valid TOML in UTF-8: {error}") from None
    except OSError as error:
        raise GeovqError(f"cannot read config file {path} ({error.strerror})") from None
    for key, value in toml.toml_data.items():
        annotation = getattr(Settings.model_fields.get(key), "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if not isinstance(value, dict):
                raise GeovqError(
                    f"config file {path}: {key} = {value!r} is not a table; write [{key}] "
                    "and its settings below it"
                )
    return toml


def _default_config(overrides: dict[str, Any]) -> Path | None:
    run_dir = overrides.get("run_dir") or os.environ.get("GEOVQ_RUN_DIR") or "runs/default"
    candidate = Path(run_dir) / CONFIG_NAME
    return candidate if candidate.is_file() else None


def _describe(error: ValidationError, sources: dict[str, str]) -> str:
    """One line naming the first bad setting, its value, where it came from, and the fix."""
    first = error.errors()[0]
    path = ".".join(str(part) for part in first["loc"] if not isinstance(part, int))
    where = _lookup(sources, path) or "default"
    if first["type"] == "extra_forbidden":
        return f"unknown setting {path!r} from {where}; {_suggest(path, list(setting_paths()))}"
    value, message = first.get("input"), first["msg"].removeprefix("Value error, ")
    return f"invalid value {value!r} for {path} from {where}: {message}"
