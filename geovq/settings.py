"""One typed settings object for every stage.

Sources, lowest first: defaults < TOML config (``geovq.toml`` in the run directory, or
``--config``) < environment (``GEOVQ_VAE__EPOCHS=5``) < command-line flags. Validation lives
here so the CLI, the Python API and the config file all get the same errors.
"""

from __future__ import annotations

import re
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from geovq import GeovqError

CONFIG_NAME = "geovq.toml"
_GRID = re.compile(r"^(\d+)x(\d+)$")


def parse_grid(text: str) -> tuple[int, int]:
    """'2x4' -> (2, 4); GeovqError for anything else."""
    match = _GRID.match(text.strip()) if isinstance(text, str) else None
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise GeovqError(f"grid {text!r} is not of the form HxW with H, W >= 1 (e.g. 2x4)")
    return int(match[1]), int(match[2])


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSettings(Section):
    dataset: str = "mnist5k"
    limit: int | None = Field(None, ge=1)
    data_dir: Path | None = None
    download: bool = False
    image_size: int | None = Field(None, ge=4)
    channels: Literal[1, 3] | None = None


class TrainSettings(Section):
    """Knobs shared by every training stage."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    resume: bool = False


def _check_name(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", value):
        raise ValueError("use letters, digits, '_' or '-' only")
    return value


class VaeSettings(TrainSettings):
    name: str | None = None  # several VAEs per run: vae-NAME.safetensors, latents-NAME...
    beta: float = Field(1.0, ge=0)
    recon_loss: Literal["auto", "bce", "mse"] = "auto"
    latent: Literal["flat", "spatial"] = "flat"
    latent_dim: int = Field(32, ge=1)
    spatial_channels: int = Field(4, ge=1)

    _name = field_validator("name")(_check_name)


class ExtractSettings(Section):
    as_name: str | None = None
    batch_size: int = Field(512, ge=1)

    _as_name = field_validator("as_name")(_check_name)


class QuantizeSettings(Section):
    metric: Literal["euclidean", "w2", "geodesic"] = "w2"
    k: int = Field(256, ge=1)
    chunks: int | None = Field(None, ge=1)
    grid: str | None = None
    codebook: Literal["shared", "per-position"] = "shared"
    name: str | None = None
    fit_split: str = "train"
    restarts: int = Field(3, ge=1)
    iters: int = Field(100, ge=1)
    tol: float = Field(1e-4, ge=0)
    knn: int = Field(10, ge=1)
    edge_weight: Literal["w2", "w2sq"] = "w2"
    assign: Literal["geodesic", "w2"] = "geodesic"
    refit_decoder: bool = False

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: str | None) -> str | None:
        if value is not None:
            parse_grid(value)
        return value


class RefitSettings(TrainSettings):
    source: str | None = None
    epochs: int = Field(5, ge=1)
    lr: float = Field(5e-4, gt=0)


class VqvaeSettings(TrainSettings):
    grid: str = "7x7"
    k: int = Field(256, ge=1)
    codebook_dim: int = Field(4, ge=1)
    beta: float = Field(0.25, ge=0)
    codebook_update: Literal["loss", "ema"] = "ema"
    ema_decay: float = Field(0.99, gt=0, lt=1)
    dead_code_restart: int = Field(100, ge=0)
    init: Literal["random", "kmeans"] = "kmeans"
    recon_loss: Literal["auto", "bce", "mse"] = "auto"
    name: str | None = None

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: str) -> str:
        parse_grid(value)
        return value


class PriorSettings(TrainSettings):
    source: str | None = None
    epochs: int = Field(15, ge=1)
    layers: int = Field(6, ge=1)
    hidden: int = Field(64, ge=1)
    conditional: bool = False


class SampleSettings(Section):
    source: str | None = None
    mode: Literal["prior", "random", "vae"] = "prior"
    n: int = Field(64, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0)
    class_label: int | None = Field(None, ge=0)
    out: Path | None = None


class CompareSettings(Section):
    split: str = "test"
    sweep_k: str | None = None
    classifier_epochs: int = Field(3, ge=1)
    samples: int = Field(500, ge=2)

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

    metrics: list[Literal["euclidean", "w2", "geodesic"]] = ["euclidean", "w2", "geodesic"]
    spatial: bool = True
    spatial_metrics: list[Literal["euclidean", "w2", "geodesic"]] = ["w2", "geodesic"]
    # Metrics also fitted with one codebook per position (same bits, L x the codewords).
    per_position_metrics: list[Literal["euclidean", "w2", "geodesic"]] = []
    vqvae_grids: list[str] = ["2x4", "7x7"]
    refit: bool = True
    priors: bool = True
    redo: list[str] = []  # stage families to redo (``geovq run --force STAGE``)

    @field_validator("vqvae_grids")
    @classmethod
    def _grids(cls, values: list[str]) -> list[str]:
        for value in values:
            parse_grid(value)
        return values


class Settings(BaseSettings):
    """Every stage's settings plus the globals; see the module docstring for precedence."""

    model_config = SettingsConfigDict(
        env_prefix="GEOVQ_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    run_dir: Path = Path("runs/default")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    force: bool = False
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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: flags (init) > environment > TOML file > preset > defaults.
        return (init_settings, env_settings, _TomlSource(settings_cls), _PresetSource(settings_cls))


_config_file: ContextVar[Path | None] = ContextVar("geovq_config_file", default=None)
_preset: ContextVar[dict[str, Any] | None] = ContextVar("geovq_preset", default=None)


class _PresetSource(PydanticBaseSettingsSource):
    """A ``geovq run --preset``'s values: just above the defaults, below everything else."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _preset.get() or {}


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the TOML config chosen by ``load_settings`` (none: contributes nothing)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _config_file.get()
        if path is None:
            return {}
        try:
            return tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise GeovqError(f"config file {path} is not valid TOML: {error}") from None


def load_settings(
    overrides: dict[str, Any] | None = None,
    config: Path | None = None,
    preset: dict[str, Any] | None = None,
) -> Settings:
    """Build Settings from every source; ``overrides`` are nested flags the user actually set.

    The TOML file is ``config`` if given, else ``geovq.toml`` in the run directory (which
    itself may come from the flags or the environment).
    """
    overrides = overrides or {}
    if config is not None and not Path(config).is_file():
        raise GeovqError(f"config file {config} does not exist; pass an existing --config path")
    if config is None:
        config = _default_config(overrides)
    token = _config_file.set(Path(config) if config else None)
    preset_token = _preset.set(preset or {})
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise GeovqError(_describe(error, config)) from None
    finally:
        _config_file.reset(token)
        _preset.reset(preset_token)


def _default_config(overrides: dict[str, Any]) -> Path | None:
    import os

    run_dir = overrides.get("run_dir") or os.environ.get("GEOVQ_RUN_DIR") or "runs/default"
    candidate = Path(run_dir) / CONFIG_NAME
    return candidate if candidate.is_file() else None


# Settings whose command-line flag is not simply the field name.
_FLAGS = {
    "vae.name": "--vae",
    "extract.as_name": "--as",
    "sample.class_label": "--class",
    "quantize.name": "--name",
}


def _describe(error: ValidationError, config: Path | None) -> str:
    """One line naming the first bad setting, its value and the fix."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    origin = f" (config file {config})" if config else ""
    if first["type"] == "extra_forbidden":
        return f"unknown setting {where!r}{origin}; remove it or check its spelling"
    value = first.get("input")
    flag = _FLAGS.get(where, "--" + str(first["loc"][-1]).replace("_", "-"))
    return f"invalid value {value!r} for {flag} ({where}){origin}: {first['msg']}"
