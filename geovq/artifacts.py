"""The run directory's artifact kinds: where each lives, which stage writes it, its metadata
(written and parsed here and nowhere else) and a loader that checks the file against the sha256
the manifest recorded for it.

Kinds: a VAE and its latents (``VaeFiles``), a quantization (``Quantization``: codebook +
codes, plus a refit decoder for a post-hoc one or the model of a VQ-VAE), a prior
(``PriorFiles``), samples (``SamplesFiles``) and the report (``REPORT_*``). Stages read
through a ``Reader``, which remembers every input it verified so the stage can record it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Self

import torch

from geovq import GeovqError
from geovq.names import check_name, parse_source
from geovq.rundir import RunDir, parse_tensors, read_file, split_digest
from geovq.settings import DataSettings

__all__ = ["check_name", "parse_source"]


# -- verified reading --------------------------------------------------------------------------
class Reader:
    """Reads artifacts of one run, each checked against its producer's record in the manifest.

    ``force`` accepts a file that changed since it was recorded (or was never recorded).
    ``inputs`` maps every file read to its sha256: what a stage record lists.
    """

    def __init__(
        self, run_dir: RunDir, force: bool = False, manifest: dict[str, Any] | None = None
    ) -> None:
        self.run_dir = run_dir
        self.force = force
        self.manifest = manifest if manifest is not None else run_dir.manifest()
        self.inputs: dict[str, str] = {}

    def record_of(self, key: str) -> dict[str, Any] | None:
        return self.manifest["stages"].get(key)

    def narrow_to_splits(
        self, relpath: str, tensors: dict[str, torch.Tensor], splits: Iterable[str]
    ) -> None:
        """List only these splits of a file read whole as inputs (``FILE#SPLIT``, by
        ``split_digest``), so a split added to it later (``extract --as``) leaves the stage
        current; a file not read is left as it is."""
        if self.inputs.pop(relpath, None) is None:
            return
        for split in splits:
            self.inputs[f"{relpath}#{split}"] = split_digest(tensors, split)

    def read(
        self, relpath: str, producer: str, what: str
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and metadata of ``relpath``, which stage ``producer`` wrote."""
        data = self.read_bytes(relpath, producer, what)
        return parse_tensors(data, self.run_dir.file(relpath))

    def read_bytes(self, relpath: str, producer: str, what: str) -> bytes:
        path = self.run_dir.file(relpath)
        command = rerun_command(producer)
        if not path.is_file():
            raise GeovqError(f"{what} not found at {path}; run `{command}` first")
        data = read_file(path)
        digest = hashlib.sha256(data).hexdigest()
        recorded = (self.record_of(producer) or {}).get("outputs", {}).get(relpath)
        if not self.force and recorded is None:
            raise GeovqError(
                f"{path} is not recorded in {self.run_dir.manifest_path} (left by an "
                f"interrupted run?); rerun `{command} --force`, or pass --force to use it"
            )
        if not self.force and recorded["sha256"] != digest:
            raise GeovqError(
                f"{path} changed since stage {producer!r} wrote it (sha256 mismatch); rerun "
                f"`{command} --force`, or pass --force to use it as it is"
            )
        self.inputs[relpath] = digest
        return data


def rerun_command(key: str) -> str:
    """The command that rewrites a stage key's outputs: what an error tells the user to run."""
    family, _, name = key.partition("/")
    if family in ("train-vae", "extract", "sample"):
        if family == "sample":
            return "geovq sample"
        return f"geovq {family}" + (f" --vae {name}" if name else "")
    if family == "quantize":
        return f"geovq quantize --name {name}"
    if family == "train-vqvae":
        return f"geovq train-vqvae --name {name}"
    if family == "refit-decoder":
        return f"geovq refit-decoder --source quant/{name}"
    if family == "train-prior":
        return f"geovq train-prior --source {name.replace('-', '/', 1)}"
    return f"geovq {family}"


def _config_text(value: Any) -> str:
    """A model config as the JSON text its ``from_json`` reads (older files stored text)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _decoded(value: Any) -> Any:
    """Older files (schema 1) stored every metadata value as a JSON string."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _bad_metadata(path, error: Exception, command: str) -> GeovqError:  # noqa: ANN001
    return GeovqError(f"{path} does not hold what geovq wrote there ({error}); rerun `{command}`")


# -- VAE and latents ---------------------------------------------------------------------------
@dataclass(frozen=True)
class VaeFiles:
    """Where one VAE's artifacts live. A run may hold several VAEs (``--vae NAME``, e.g. a flat
    and a spatial one); the unnamed default keeps the plain file names."""

    name: str | None = None

    def __post_init__(self) -> None:
        if self.name is not None:
            check_name(self.name, "--vae")

    @property
    def suffix(self) -> str:
        return f"-{self.name}" if self.name else ""

    @property
    def vae(self) -> str:
        return f"vae{self.suffix}.safetensors"

    @property
    def latents(self) -> str:
        return f"latents{self.suffix}.safetensors"

    @property
    def train_key(self) -> str:
        return f"train-vae/{self.name}" if self.name else "train-vae"

    @property
    def extract_key(self) -> str:
        return f"extract/{self.name}" if self.name else "extract"

    @property
    def checkpoint(self) -> str:
        return f"checkpoints/train-vae{self.suffix}.safetensors"

    @property
    def flag(self) -> str:
        return f" --vae {self.name}" if self.name else ""


@dataclass
class VaeMeta:
    """Metadata of ``vae*.safetensors``: the architecture, the loss and the data it saw."""

    config: dict[str, Any]
    recon_loss: str
    data: dict[str, Any]

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> Self:
        return cls(
            config=_decoded(meta["config"]),
            recon_loss=str(meta.get("recon_loss", "bce")),
            data=_decoded(meta.get("data", {})),
        )


def load_vae(reader: Reader, device: torch.device, files: VaeFiles = VaeFiles()):
    """The trained VAE (eval mode) and its metadata, verified against the manifest."""
    from geovq.models.vae import VAE, VAEConfig

    tensors, raw = reader.read(files.vae, files.train_key, f"trained VAE{files.flag}")
    try:
        meta = VaeMeta.from_metadata(raw)
        model = VAE(VAEConfig.from_json(_config_text(meta.config)))
        model.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise _bad_metadata(
            reader.run_dir.file(files.vae), error, f"geovq train-vae{files.flag}"
        ) from None
    return model.to(device).eval(), meta


@dataclass
class LatentsMeta:
    """Metadata of ``latents*.safetensors``."""

    latent_dim: int
    grid: tuple[int, int] | None
    vae: str | None
    vae_config: dict[str, Any]
    extra_splits: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> data settings

    def to_metadata(self) -> dict[str, Any]:
        meta = asdict(self)
        meta["grid"] = list(self.grid) if self.grid else None
        meta["vae"] = self.vae or ""
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> LatentsMeta:
        grid = _decoded(meta.get("grid"))
        return cls(
            latent_dim=int(_decoded(meta["latent_dim"])),
            grid=tuple(grid) if grid else None,
            vae=meta.get("vae") or None,
            vae_config=_decoded(meta.get("vae_config", {})),
            extra_splits=_decoded(meta.get("extra_splits", {})),
        )


def load_latents(reader: Reader, files: VaeFiles = VaeFiles()):
    """``{split}.mu / .logvar / .labels`` and the metadata, verified against the manifest."""
    tensors, raw = reader.read(files.latents, files.extract_key, f"latents{files.flag}")
    try:
        meta = LatentsMeta.from_metadata(raw)
    except (KeyError, TypeError, ValueError) as error:
        raise _bad_metadata(
            reader.run_dir.file(files.latents), error, f"geovq extract{files.flag}"
        ) from None
    return tensors, meta


def latent_splits(latents: dict[str, torch.Tensor]) -> list[str]:
    """Split names in a latents file, run's own first (train, test), extras after."""
    names = sorted({key.rsplit(".", 1)[0] for key in latents})
    own = [name for name in ("train", "test") if name in names]
    return own + [name for name in names if name not in own]


def recorded_vaes(manifest: dict[str, Any]) -> list[VaeFiles]:
    """Every VAE the manifest records a training of, in record order."""
    return [
        VaeFiles(None if key == "train-vae" else key.split("/", 1)[1])
        for key in manifest["stages"]
        if key == "train-vae" or key.startswith("train-vae/")
    ]


def first_trained_record(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The record of the run's first trained model (VAE or VQ-VAE): it fixes the run's data."""
    for key, record in manifest["stages"].items():
        if key == "train-vae" or key.startswith(("train-vae/", "train-vqvae/")):
            return record
    return None


def recorded_data(record: dict[str, Any], where: str) -> DataSettings:
    try:
        return DataSettings(**record["settings"]["data"])
    except (KeyError, TypeError, ValueError) as error:
        raise GeovqError(
            f"the data settings recorded in {where} are unreadable ({error}); "
            "rerun `geovq train-vae --force`"
        ) from None


def run_data_settings(reader: Reader, files: VaeFiles = VaeFiles()) -> DataSettings:
    """The dataset settings the VAE was trained on, as recorded in the manifest."""
    record = reader.record_of(files.train_key)
    if record is None:
        raise GeovqError(
            f"no trained VAE recorded in {reader.run_dir.path}; run `geovq train-vae{files.flag}` "
            "first (or check --run-dir)"
        )
    return recorded_data(record, str(reader.run_dir.manifest_path))


def split_images(
    reader: Reader, latents_meta: LatentsMeta, files: VaeFiles = VaeFiles()
) -> dict[str, torch.Tensor]:
    """uint8 images of every split in the latents file: the run's own and ``--as`` extras."""
    from geovq.data import load_dataset

    own = load_dataset(run_data_settings(reader, files))
    images = {name: split.images for name, split in own.splits.items()}
    for name, data_json in latents_meta.extra_splits.items():
        images[name] = load_dataset(DataSettings(**data_json)).whole().images
    return images


# -- quantizations -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Quantization:
    """A quantization's files: ``quant/<name>/`` (post hoc) or ``vqvae/<name>/`` (VQ-VAE)."""

    kind: str  # "quant" | "vqvae"
    name: str

    @classmethod
    def parse(cls, source: str, flag: str = "--source") -> Quantization:
        return cls(*parse_source(source, flag))

    def __post_init__(self) -> None:
        parse_source(f"{self.kind}/{self.name}")

    @property
    def source(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def posthoc(self) -> bool:
        return self.kind == "quant"

    @property
    def slug(self) -> str:
        return f"{self.kind}-{self.name}"

    @property
    def codes(self) -> str:
        return f"{self.source}/codes.safetensors"

    @property
    def codebook(self) -> str:
        return f"{self.source}/codebook.safetensors"

    @property
    def decoder(self) -> str:
        """The refit decoder of a post-hoc quantization."""
        return f"{self.source}/decoder.safetensors"

    @property
    def model(self) -> str:
        """The VQ-VAE's weights."""
        return f"{self.source}/model.safetensors"

    @property
    def key(self) -> str:
        return f"quantize/{self.name}" if self.posthoc else f"train-vqvae/{self.name}"

    @property
    def refit_key(self) -> str:
        return f"refit-decoder/{self.name}"

    @property
    def checkpoint(self) -> str:
        return f"checkpoints/vqvae-{self.name}.safetensors"

    @property
    def refit_checkpoint(self) -> str:
        return f"checkpoints/refit-{self.slug}.safetensors"


@dataclass
class CodesMeta:
    """Metadata of a quantization's codebook and codes, for both kinds."""

    kind: str  # "posthoc" | "vqvae"
    k: int
    grid: tuple[int, int]
    source: str
    per_position: bool = False
    metric: str | None = None
    chunks: int | None = None
    vae: str | None = None
    fit_split: str | None = None

    def to_metadata(self) -> dict[str, Any]:
        return {**asdict(self), "grid": list(self.grid)}

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> CodesMeta:
        chunks = _decoded(meta.get("chunks"))
        return cls(
            kind=str(meta.get("kind", "vqvae")),
            k=int(_decoded(meta["k"])),
            grid=tuple(int(v) for v in _decoded(meta["grid"])),
            source=str(meta.get("source", "")),
            per_position=_decoded(meta.get("per_position", False)) is True,
            metric=meta.get("metric") or None,
            chunks=int(chunks) if chunks not in (None, "") else None,
            vae=meta.get("vae") or None,
            fit_split=_decoded(meta.get("fit_split")) or None,
        )


def load_codes(reader: Reader, quant: Quantization):
    """``{split}.codes`` (N, H, W) and ``{split}.labels`` of a quantization, and its metadata."""
    tensors, raw = reader.read(quant.codes, quant.key, f"codes of {quant.source}")
    return tensors, _codes_meta(reader, quant, raw, quant.codes)


def load_codebook(reader: Reader, quant: Quantization):
    """A post-hoc quantization's codebook (a ``quant.codebook.Codebook``) and its metadata,
    verified against the manifest."""
    from geovq.quant.codebook import Codebook

    tensors, raw = reader.read(quant.codebook, quant.key, f"codebook of {quant.source}")
    meta = _codes_meta(reader, quant, raw, quant.codebook)
    try:
        return Codebook.from_tensors(tensors, meta.metric or "", meta.k), meta
    except ValueError as error:
        raise _bad_metadata(
            reader.run_dir.file(quant.codebook), error, rerun_command(quant.key)
        ) from None


def _codes_meta(reader: Reader, quant: Quantization, raw: dict, relpath: str) -> CodesMeta:
    try:
        return CodesMeta.from_metadata(raw)
    except (KeyError, TypeError, ValueError) as error:
        raise _bad_metadata(reader.run_dir.file(relpath), error, rerun_command(quant.key)) from None


def list_quantizations(run_dir: RunDir) -> list[Quantization]:
    """Every quantization recorded in the run, post-hoc first, each sorted by name."""
    stages = run_dir.manifest()["stages"]
    found = []
    for kind, family in (("quant", "quantize/"), ("vqvae", "train-vqvae/")):
        names = sorted(key.removeprefix(family) for key in stages if key.startswith(family))
        found += [
            Quantization(kind, name)
            for name in names
            if run_dir.exists(f"{kind}/{name}/codes.safetensors")
        ]
    return found


@dataclass
class DecoderMeta:
    """Metadata of a refit decoder (``quant/<name>/decoder.safetensors``)."""

    source: str
    vae: str | None
    epochs: int

    def to_metadata(self) -> dict[str, Any]:
        return {**asdict(self), "vae": self.vae or ""}


@dataclass
class ModelMeta(VaeMeta):
    """Metadata of a VQ-VAE's weights: the same fields as a VAE's."""


def load_vqvae(reader: Reader, quant: Quantization, device: torch.device):
    """A VQ-VAE's model (eval mode), verified against the manifest."""
    from geovq.models.vqvae import VQVAE, VQVAEConfig

    tensors, raw = reader.read(quant.model, quant.key, f"model of {quant.source}")
    try:
        meta = ModelMeta.from_metadata(raw)
        model = VQVAE(VQVAEConfig.from_json(_config_text(meta.config)))
        model.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise _bad_metadata(
            reader.run_dir.file(quant.model), error, rerun_command(quant.key)
        ) from None
    return model.to(device).eval(), meta


def load_refit_decoder(reader: Reader, quant: Quantization) -> dict[str, torch.Tensor]:
    """A post-hoc quantization's refit decoder; refuses one refit on codes since replaced."""
    tensors, _ = reader.read(quant.decoder, quant.refit_key, f"refit decoder of {quant.source}")
    stale = [
        path
        for path in reader.run_dir.stale_inputs(quant.refit_key, reader.manifest)
        if path in (quant.codes, quant.codebook)
    ]
    if stale and not reader.force:
        raise GeovqError(
            f"{reader.run_dir.file(quant.decoder)} was refit on codes that have since changed; "
            f"rerun `geovq refit-decoder --source {quant.source} --force`, or pass --force"
        )
    return tensors


# -- priors, samples, report -------------------------------------------------------------------
@dataclass(frozen=True)
class PriorFiles:
    """The PixelCNN prior over one quantization's codes."""

    quant: Quantization

    @property
    def path(self) -> str:
        return f"prior/{self.quant.slug}.safetensors"

    @property
    def key(self) -> str:
        return f"train-prior/{self.quant.slug}"

    @property
    def checkpoint(self) -> str:
        return f"checkpoints/prior-{self.quant.slug}.safetensors"


@dataclass
class PriorMeta:
    config: dict[str, Any]
    source: str
    source_codes_sha256: str

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> PriorMeta:
        return cls(
            config=_decoded(meta["config"]),
            source=str(meta["source"]),
            source_codes_sha256=str(meta.get("source_codes_sha256", "")),
        )


def load_prior(reader: Reader, files: PriorFiles, codes_sha256: str, device: torch.device):
    """The prior of a quantization; refuses one trained on other (or since changed) codes."""
    from geovq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig

    source = files.quant.source
    path = reader.run_dir.file(files.path)
    if not path.is_file():
        raise GeovqError(f"no prior for {source}; run `geovq train-prior --source {source}` first")
    tensors, raw = reader.read(files.path, files.key, f"prior of {source}")
    try:
        meta = PriorMeta.from_metadata(raw)
        model = GatedPixelCNN(PixelCNNConfig.from_json(_config_text(meta.config)))
        model.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise _bad_metadata(path, error, rerun_command(files.key)) from None
    if meta.source != source:
        raise GeovqError(f"{path} was trained on {meta.source}, not {source}")
    if meta.source_codes_sha256 != codes_sha256 and not reader.force:
        raise GeovqError(
            f"the codes of {source} changed since its prior was trained; rerun "
            f"`geovq train-prior --source {source} --force` or pass --force"
        )
    return model.to(device).eval()


@dataclass(frozen=True)
class SamplesFiles:
    """Samples of one source (or of a VAE) in one mode."""

    folder: str  # a quantization's slug, or vae[-NAME]
    mode: str

    @property
    def stem(self) -> str:
        return "samples" if self.mode == "prior" else self.mode

    @property
    def tensors(self) -> str:
        return f"samples/{self.folder}/{self.stem}.safetensors"

    @property
    def png(self) -> str:
        return f"samples/{self.folder}/{self.stem}.png"

    @property
    def key(self) -> str:
        return f"sample/{self.folder}/{self.mode}"


REPORT_KEY = "compare"
REPORT_DIR = "report"
REPORT_METRICS = f"{REPORT_DIR}/metrics.json"
REPORT_MARKDOWN = f"{REPORT_DIR}/report.md"
REPORT_CLASSIFIER = f"{REPORT_DIR}/classifier.safetensors"
