"""The run directory: artifacts as safetensors, sha256 of each, and ``manifest.json``.

Every write is atomic (temporary file in the same folder, fsync, rename) and a stage records
itself in the manifest last, so an interrupted or failed stage leaves the previous state.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from geovq import GeovqError, __version__

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
METADATA_KEY = "geovq"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temporary, 0o666 & ~_umask())
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    return {"geovq": __version__, "torch": torch.__version__, "python": platform.python_version()}


@dataclass
class StageRecord:
    """What one stage did: enough to audit it and to tell whether its outputs are current."""

    stage: str
    settings: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)  # relpath -> sha256
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # relpath -> sha256, shapes
    metrics: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0
    device: str = "cpu"
    seed: int = 0
    started: str = ""
    finished: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class RunDir:
    """Paths, artifacts and the manifest of one run."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    # -- artifacts -------------------------------------------------------------------------
    def file(self, relpath: str) -> Path:
        return self.path / relpath

    def exists(self, relpath: str) -> bool:
        return self.file(relpath).is_file()

    def save_tensors(
        self, relpath: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Atomically write a safetensors file; returns its sha256 and tensor shapes."""
        contiguous = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        # One metadata key holding sorted JSON: safetensors writes several keys in hash order,
        # which would make identical artifacts differ byte for byte.
        packed = {METADATA_KEY: json.dumps(metadata or {}, sort_keys=True)}
        data = save_safetensors_bytes(contiguous, metadata=packed)
        atomic_write_bytes(self.file(relpath), data)
        return {
            "sha256": hashlib.sha256(data).hexdigest(),
            "shapes": {name: list(t.shape) for name, t in contiguous.items()},
        }

    def load_tensors(self, relpath: str, what: str) -> tuple[dict[str, torch.Tensor], dict]:
        """Read a safetensors file and its metadata; a clear error if missing or corrupt."""
        path = self.file(relpath)
        if not path.is_file():
            raise GeovqError(f"{what} not found at {path}; {_producer_hint(relpath)}")
        data = path.read_bytes()
        try:
            tensors = load_safetensors_bytes(data)
            metadata = _safetensors_metadata(data)
        except (SafetensorError, ValueError, json.JSONDecodeError) as error:
            raise GeovqError(
                f"{path} is corrupted or truncated ({error}); delete it and rerun the stage "
                "that writes it"
            ) from None
        return tensors, metadata

    def sha256(self, relpath: str) -> str:
        return sha256_file(self.file(relpath))

    # -- manifest --------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.is_file():
            return {"schema_version": SCHEMA_VERSION, "versions": package_versions(), "stages": {}}
        try:
            return json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as error:
            raise GeovqError(
                f"{self.manifest_path} is not valid JSON ({error}); restore or delete it"
            ) from None

    def stage(self, key: str) -> dict[str, Any] | None:
        return self.manifest()["stages"].get(key)

    def record(self, record: StageRecord) -> None:
        """Add or replace one stage's record; the manifest is the last file a stage writes."""
        manifest = self.manifest()
        manifest["schema_version"] = SCHEMA_VERSION
        manifest["versions"] = package_versions()
        manifest["stages"][record.stage] = record.to_json()
        text = json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n"
        atomic_write_bytes(self.manifest_path, text.encode())

    def stale_inputs(self, key: str) -> list[str]:
        """Inputs of a recorded stage whose sha256 no longer matches (or that vanished)."""
        record = self.stage(key)
        if record is None:
            return []
        stale = []
        for relpath, digest in record.get("inputs", {}).items():
            if not self.exists(relpath) or self.sha256(relpath) != digest:
                stale.append(relpath)
        return stale

    def outputs_current(self, key: str) -> bool:
        """True when the stage is recorded, its outputs exist unchanged and its inputs too."""
        record = self.stage(key)
        if record is None:
            return False
        for relpath, info in record.get("outputs", {}).items():
            if not self.exists(relpath) or self.sha256(relpath) != info["sha256"]:
                return False
        return not self.stale_inputs(key)

    def check_current(self, relpath: str, producer_key: str, force: bool) -> None:
        """Refuse to read an artifact changed since its producer recorded it, unless forced."""
        record = self.stage(producer_key)
        if force or record is None or relpath not in record.get("outputs", {}):
            return
        if self.exists(relpath) and self.sha256(relpath) != record["outputs"][relpath]["sha256"]:
            raise GeovqError(
                f"{self.file(relpath)} changed since stage {producer_key!r} wrote it; rerun "
                f"that stage, or pass --force to use it as it is"
            )


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    raw = header.get("__metadata__", {}) or {}
    return json.loads(raw[METADATA_KEY]) if METADATA_KEY in raw else raw


_PRODUCERS = {
    "vae.safetensors": "run `geovq train-vae` first",
    "latents.safetensors": "run `geovq extract` first",
}


def _producer_hint(relpath: str) -> str:
    if relpath in _PRODUCERS:
        return _PRODUCERS[relpath]
    if relpath.startswith("quant/"):
        return "run `geovq quantize` first"
    if relpath.startswith("vqvae/"):
        return "run `geovq train-vqvae` first"
    if relpath.startswith("prior/"):
        return "run `geovq train-prior` first"
    return "check the run directory (--run-dir)"
