"""The run directory: one lock, a staging folder per running stage, and ``manifest.json``.

A stage never writes into the run directory while it works: its outputs go to its own
staging folder ``RUN/.staging/<id>/``. ``Transaction.commit`` then, under the lock
(``fcntl.flock`` on ``RUN/.lock``), writes a journal, moves every staged file into place and
installs the new manifest. The journal is the commit point: a failure or a kill before it
leaves the previous state; after it, the next stage that takes the lock finishes the moves.
Staging folders of dead processes (their holder lock is free) are removed by the next stage,
which says so.

Several processes may run one stage together (torchrun): ``Peers`` says whether this one
writes; the others read the same run directory and write nothing, and starts and commits wait
for all of them (``geovq.distributed`` provides the ranks; this module knows none).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import functools
import hashlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from geovq import GeovqError, __version__, signals

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
MANIFEST = "manifest.json"
LOCK = ".lock"
STAGING = ".staging"
METADATA_KEY = "geovq"
FAULT_ENV = "GEOVQ_FAULT_INJECT"  # test hook: kill -9 this process at a named commit step
_OLD_TMP = re.compile(r"^\..+\.tmp$")


# -- who writes --------------------------------------------------------------------------------
class Peers:
    """The other processes running the same stage, as the run directory sees them. Alone (the
    default) this process writes and nothing waits. With peers, one process writes (``writes``)
    and the others compute the same stage without writing; ``arrive`` waits until every
    process got to a commit (a peer that failed raises there), ``tell`` / ``hear`` pass the
    writer's outcome of a start or a commit to the others."""

    writes = True

    def arrive(self) -> None:
        """Wait until every process has reached this point."""

    def tell(self, ok: bool) -> None:
        """The writer: tell the others whether its step worked."""

    def hear(self) -> bool:
        """The others: whether the writer's step worked."""
        return True

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """A step the writer does alone, then tells the others how it went."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):  # the peers may be gone already
                self.tell(False)
            raise
        self.tell(True)

    def await_writer(self, step: str) -> None:
        """The others: wait for the writer's step; its failure (its own line says why) is ours."""
        if not self.hear():
            raise GeovqError(f"rank 0 could not {step}; its error line says why")


_ALONE = Peers()
_peers: contextvars.ContextVar[Peers | None] = contextvars.ContextVar("geovq_peers", default=None)


@contextlib.contextmanager
def using_peers(peers: Peers) -> Iterator[None]:
    """Run directories opened inside see ``peers`` (``geovq.distributed.session``)."""
    token = _peers.set(peers)
    try:
        yield
    finally:
        _peers.reset(token)


def current_peers() -> Peers:
    return _peers.get() or _ALONE


# -- files -------------------------------------------------------------------------------------
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half.

    The temporary file carries this process's id, so a later stage can tell a dead process's
    leftover (removed) from a live one's (kept).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        _write_synced(temporary, data)
        _fault("term-while-writing", signal.SIGTERM)
        os.replace(temporary, path)
    except BaseException:
        with signals.held():  # a second signal must not cut the cleanup short
            temporary.unlink(missing_ok=True)
        raise


def _write_synced(path: Path, data: bytes) -> None:
    """Write and fsync; a failure names the file (ENOSPC from a write carries no path)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as error:
        if error.filename:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_digest(tensors: dict[str, torch.Tensor], split: str) -> str:
    """sha256 over one split's tensors (``{split}.*``: names, dtypes, shapes, bytes, in name
    order): what a stage that read only that split of a file records, so that adding another
    split to the file (``extract --as``) leaves the stage current."""
    digest = hashlib.sha256()
    for name in sorted(n for n in tensors if n.rsplit(".", 1)[0] == split):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@functools.cache
def package_versions() -> dict[str, str]:
    """What produced a run: geovq, its main libraries, CUDA, and the source's git commit."""
    import numpy
    import torchvision

    versions = {
        "geovq": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda or "none",
        "python": platform.python_version(),
    }
    commit = _git_commit(Path(__file__).resolve().parent.parent)
    return versions | ({"git_commit": commit} if commit else {})


def _git_commit(folder: Path) -> str | None:
    """HEAD of the git checkout holding ``folder`` (``+dirty`` with local changes), or None."""
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def strict_json(value: Any) -> str:
    """JSON any strict parser accepts: a non-finite float (a missing figure) becomes null."""
    return json.dumps(_finite(value), indent=2, sort_keys=True, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, str | int | bool) or value is None:
        return value
    if torch.is_tensor(value):
        return _finite(value.tolist())
    return str(value)


def tensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None) -> bytes:
    """A safetensors file whose metadata is one key holding sorted strict JSON.

    safetensors writes several metadata keys in hash order, which would make identical
    artifacts differ byte for byte; one key keeps them reproducible.
    """
    contiguous = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    packed = {METADATA_KEY: json.dumps(_finite(metadata or {}), sort_keys=True, allow_nan=False)}
    return save_safetensors_bytes(contiguous, metadata=packed)


def parse_tensors(data: bytes, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a safetensors file; one line naming the file if it is broken."""
    try:
        tensors = load_safetensors_bytes(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        raw = header.get("__metadata__", {}) or {}
        metadata = json.loads(raw[METADATA_KEY]) if METADATA_KEY in raw else raw
    except (SafetensorError, ValueError, UnicodeDecodeError, TypeError) as error:
        raise GeovqError(
            f"{path} is corrupted or truncated ({error}); delete it and rerun the stage "
            "that writes it"
        ) from None
    if not isinstance(metadata, dict):
        raise GeovqError(f"{path} is corrupted (metadata is not an object); rerun its stage")
    return tensors, metadata


# -- the manifest ------------------------------------------------------------------------------
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


def empty_manifest() -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "versions": package_versions(), "stages": {}}


def validate_manifest(manifest: Any) -> str | None:
    """What is wrong with a parsed manifest (schema and types), or None when it is sound."""
    if not isinstance(manifest, dict):
        return f"the top level is a {type(manifest).__name__}, not an object"
    version = manifest.get("schema_version")
    if version not in READABLE_SCHEMAS:
        return f"schema_version {version!r} is not one of {list(READABLE_SCHEMAS)}"
    stages = manifest.get("stages")
    if not isinstance(stages, dict):
        return "'stages' is missing or not an object"
    for key, record in stages.items():
        if not isinstance(record, dict):
            return f"stage {key!r} is a {type(record).__name__}, not an object"
        for part in ("settings", "inputs", "outputs", "metrics"):
            if not isinstance(record.get(part, {}), dict):
                return f"stage {key!r}: {part!r} is not an object"
        for relpath, digest in record.get("inputs", {}).items():
            if not isinstance(digest, str):
                return f"stage {key!r}: input {relpath!r} has no sha256"
        for relpath, info in record.get("outputs", {}).items():
            if not isinstance(info, dict) or not isinstance(info.get("sha256"), str):
                return f"stage {key!r}: output {relpath!r} has no sha256"
            if not _inside(relpath):
                return f"stage {key!r}: output {relpath!r} is outside the run directory"
    return None


def _inside(relpath: str) -> bool:
    parts = Path(relpath).parts
    return bool(parts) and not Path(relpath).is_absolute() and ".." not in parts


def _parse_manifest(data: bytes, path: Path) -> dict[str, Any]:
    fix = "restore it from a backup, or move it away to start the run over"
    try:
        manifest = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise GeovqError(f"{path} is not UTF-8 text; {fix}") from None
    except json.JSONDecodeError as error:
        raise GeovqError(f"{path} is not valid JSON ({error}); {fix}") from None
    problem = validate_manifest(manifest)
    if problem:
        raise GeovqError(f"{path} is not a geovq manifest ({problem}); {fix}")
    return manifest


# -- the run directory -------------------------------------------------------------------------
class RunDir:
    """Paths, the lock and the manifest of one run."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._digests: dict[tuple[str, int, int], str] = {}
        self.peers = current_peers()

    @property
    def writes(self) -> bool:
        """False in a process that computes a stage beside the writer and writes nothing."""
        return self.peers.writes

    def file(self, relpath: str) -> Path:
        return self.path / relpath

    def exists(self, relpath: str) -> bool:
        """Whether a file exists; ``FILE#SPLIT`` (an input record of one split of a file):
        whether the file holds that split."""
        path, _, split = relpath.partition("#")
        if not self.file(path).is_file():
            return False
        return not split or any(
            name.rsplit(".", 1)[0] == split for name in self.load_tensors(path, path)[0]
        )

    def sha256(self, relpath: str) -> str:
        """sha256 of a file, remembered per (size, mtime) so a stage hashes each file once;
        ``FILE#SPLIT``: the ``split_digest`` of one split in it."""
        path, _, split = relpath.partition("#")
        stat = self.file(path).stat()
        key = (relpath, stat.st_size, stat.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = (
                split_digest(self.load_tensors(path, path)[0], split)
                if split
                else sha256_file(self.file(path))
            )
        return self._digests[key]

    def save_tensors(
        self, relpath: str, tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Atomically write a safetensors file in place (checkpoints: outside any stage's
        commit, so a kill keeps the last one); returns its sha256 and tensor shapes (none in
        a process that does not write)."""
        if not self.writes:
            return _unwritten_info(tensors)
        data = tensors_bytes(tensors, metadata)
        atomic_write_bytes(self.file(relpath), data)
        return _file_info(data, tensors)

    def load_tensors(self, relpath: str, what: str) -> tuple[dict[str, torch.Tensor], dict]:
        """Read a safetensors file and its metadata, unverified (see ``geovq.artifacts``)."""
        path = self.file(relpath)
        if not path.is_file():
            raise GeovqError(f"{what} not found at {path}; check the run directory (--run-dir)")
        return parse_tensors(read_file(path), path)

    # -- manifest --------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def manifest(self) -> dict[str, Any]:
        """The manifest, validated; an empty one when the run has none yet."""
        if not self.manifest_path.exists() and not self.manifest_path.is_symlink():
            return empty_manifest()
        return _parse_manifest(read_file(self.manifest_path), self.manifest_path)

    def stage(self, key: str) -> dict[str, Any] | None:
        return self.manifest()["stages"].get(key)

    def stale_inputs(self, key: str, manifest: dict[str, Any] | None = None) -> list[str]:
        """Inputs of a recorded stage whose sha256 no longer matches (or that vanished)."""
        record = (manifest or self.manifest())["stages"].get(key)
        if record is None:
            return []
        return [
            relpath
            for relpath, digest in record.get("inputs", {}).items()
            if not self.exists(relpath) or self.sha256(relpath) != digest
        ]

    def changed_outputs(self, key: str, manifest: dict[str, Any] | None = None) -> list[str]:
        record = (manifest or self.manifest())["stages"].get(key) or {}
        return [
            relpath
            for relpath, info in record.get("outputs", {}).items()
            if not self.exists(relpath) or self.sha256(relpath) != info["sha256"]
        ]

    def outputs_current(self, key: str, manifest: dict[str, Any] | None = None) -> bool:
        """True when the stage is recorded, its outputs exist unchanged, its inputs too, and
        each input is what its own producer recorded (not a file used with --force)."""
        manifest = manifest or self.manifest()
        if key not in manifest["stages"]:
            return False
        produced = {
            relpath: info["sha256"]
            for record in manifest["stages"].values()
            for relpath, info in record.get("outputs", {}).items()
        }
        inputs = manifest["stages"][key].get("inputs", {})
        if any(produced.get(relpath, digest) != digest for relpath, digest in inputs.items()):
            return False
        return not self.changed_outputs(key, manifest) and not self.stale_inputs(key, manifest)

    def record(self, record: StageRecord) -> None:
        """Add or replace one stage's record directly (no staged outputs), under the lock."""
        if not self.writes:
            return
        with self.lock():
            manifest = self.manifest()
            manifest["schema_version"] = SCHEMA_VERSION
            manifest["versions"] = package_versions()
            manifest["stages"][record.stage] = record.to_json()
            atomic_write_bytes(self.manifest_path, strict_json(manifest).encode())

    # -- lock, staging, commit --------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[list[str]]:
        """Hold the run's lock; first finish or remove what killed stages left behind.

        Yields the notes about that cleanup (empty when there was nothing to do).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self._recover()
        finally:
            os.close(fd)  # closing releases the lock

    def begin(self, key: str) -> Transaction:
        """Start a stage that will write ``key``: validate the manifest and claim the key. With
        peers, the writer does that first and the others then read what it left."""
        if not self.writes:
            self.peers.await_writer(f"start {key}")
            base = self.manifest()["stages"].get(key) if self.path.is_dir() else None
            return Transaction(self, key, base=base, notes=[])
        with self.peers.writing():
            return self._begin(key)

    def _begin(self, key: str) -> Transaction:
        if not self.path.is_dir():
            if self.path.exists():
                raise GeovqError(f"--run-dir {self.path} is a file; pass a directory")
            return Transaction(self, key, base=None, notes=[])
        with self.lock() as notes:
            manifest = self.manifest()
            for other in _live_claims(self.path / STAGING):
                if other == key:
                    raise GeovqError(
                        f"another geovq process is writing {key} in {self.path} right now; "
                        "wait for it to finish, or write another name (--name)"
                    )
            transaction = Transaction(self, key, base=manifest["stages"].get(key), notes=notes)
            transaction.claim()
        return transaction

    def _recover(self) -> list[str]:
        """Finish journaled commits of dead processes, remove their unfinished staging and
        temporary files. Called with the lock held."""
        notes = []
        staging = self.path / STAGING
        if staging.is_dir():
            for folder in sorted(staging.iterdir()):
                if not folder.is_dir() or _alive(folder):
                    continue
                key = _claimed_key(folder)
                if (folder / "commit.json").is_file():
                    _roll_forward(self.path, folder)
                    notes.append(f"finished the interrupted commit of {key}")
                else:
                    notes.append(f"removed unfinished outputs of {key} (a killed or failed run)")
                shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                staging.rmdir()  # only when empty
        for path in _stale_temporaries(self.path):
            path.unlink(missing_ok=True)
            notes.append(f"removed {path.relative_to(self.path)} (left by a killed write)")
        return notes


def _file_info(data: bytes, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "shapes": {name: list(t.shape) for name, t in tensors.items()},
    }


def _unwritten_info(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What a process that does not write knows of an output: its shapes."""
    return {"sha256": "", "shapes": {name: list(t.shape) for name, t in tensors.items()}}


def read_file(path: Path) -> bytes:
    """The file's bytes; a directory or unreadable file is one clear line."""
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise GeovqError(f"{path} is a directory, not a file; move it away") from None


class Transaction:
    """One stage's outputs, staged privately until ``commit`` moves them into place."""

    def __init__(
        self, run_dir: RunDir, key: str, base: dict[str, Any] | None, notes: list[str]
    ) -> None:
        self.run_dir = run_dir
        self.key = key
        self.base = base  # the key's record when the stage started
        self.notes = notes  # what the lock's cleanup did
        self.outputs: dict[str, dict[str, Any]] = {}
        self.folder: Path | None = None
        self._holder: int | None = None

    def claim(self) -> None:
        """Create the staging folder and hold its lock for as long as this process lives."""
        if self.folder is not None:
            return
        staging = self.run_dir.path / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.key)
        self.folder = staging / f"{name}-{os.getpid()}-{secrets.token_hex(4)}"
        self.folder.mkdir()
        self._holder = os.open(self.folder / "held", os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(self._holder, fcntl.LOCK_EX)
        (self.folder / "claim.json").write_text(json.dumps({"key": self.key, "pid": os.getpid()}))

    def staged(self, relpath: str) -> Path:
        """Where an output is written while the stage runs."""
        if not _inside(relpath):
            raise GeovqError(f"output {relpath!r} would leave the run directory")
        if not self.run_dir.writes:
            raise RuntimeError(f"{relpath}: a stage that writes files by path runs on rank 0 alone")
        self.claim()
        path = self.folder / "files" / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_bytes(self, relpath: str, data: bytes) -> dict[str, Any]:
        if not self.run_dir.writes:
            self.outputs[relpath] = {"sha256": ""}
            return self.outputs[relpath]
        _write_synced(self.staged(relpath), data)
        self.outputs[relpath] = {"sha256": hashlib.sha256(data).hexdigest()}
        return self.outputs[relpath]

    def adopt(self, relpath: str) -> dict[str, Any]:
        """Count a file something else wrote at ``staged(relpath)`` (a figure) as an output."""
        self.outputs[relpath] = {"sha256": sha256_file(self.staged(relpath))}
        return self.outputs[relpath]

    def save_tensors(
        self, relpath: str, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]
    ) -> dict[str, Any]:
        if not self.run_dir.writes:
            self.outputs[relpath] = _unwritten_info(tensors)
            return self.outputs[relpath]
        data = tensors_bytes(tensors, metadata)
        _write_synced(self.staged(relpath), data)
        self.outputs[relpath] = _file_info(data, tensors)
        return self.outputs[relpath]

    def commit(self, record: StageRecord) -> None:
        """Move every staged output into place and record the stage, all or nothing. With
        peers, only once every one of them got here (a failed peer stops it before anything
        moves), and they hear whether it landed."""
        record.outputs = self.outputs
        peers = self.run_dir.peers
        peers.arrive()
        if not peers.writes:
            peers.await_writer(f"commit {self.key}")
            return
        with peers.writing():
            self._commit(record)

    def _commit(self, record: StageRecord) -> None:
        with self.run_dir.lock() as notes:
            self.notes += notes
            manifest = self.run_dir.manifest()
            if manifest["stages"].get(self.key) != self.base:
                raise GeovqError(
                    f"another geovq process wrote {self.key} while this one ran; its result is "
                    "kept. Rerun with --force to replace it"
                )
            self.claim()
            manifest["schema_version"] = SCHEMA_VERSION
            manifest["versions"] = package_versions()
            manifest["stages"][self.key] = record.to_json()
            _write_synced(self.folder / MANIFEST, strict_json(manifest).encode())
            journal = {"key": self.key, "moves": sorted(self.outputs)}
            _write_synced(self.folder / "commit.json.partial", json.dumps(journal).encode())
            _fault("before-commit")
            with signals.held():  # journaled: finish it, Ctrl-C or not
                os.replace(self.folder / "commit.json.partial", self.folder / "commit.json")
                _fault("after-journal")
                _fault("term-after-journal", signal.SIGTERM)
                _roll_forward(self.run_dir.path, self.folder)
                self._drop()

    def close(self) -> None:
        """Drop the staging folder (after a commit, or to abandon the stage's outputs). A
        journaled commit that failed half way is left whole for the next stage to finish."""
        if self.folder is not None and (self.folder / "commit.json").is_file():
            self.folder = None  # not removed: the lock's cleanup rolls it forward
        self._drop()

    def _drop(self) -> None:
        with signals.held():  # removed whole, even with a second signal on the way
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
                with contextlib.suppress(OSError):
                    self.folder.parent.rmdir()  # only when empty
                self.folder = None
            if self._holder is not None:
                os.close(self._holder)
                self._holder = None


def _roll_forward(root: Path, folder: Path) -> None:
    """Apply a journaled commit: move staged files into place, then the manifest. Renames
    only, so it needs no free space and may run again after a kill."""
    journal = json.loads((folder / "commit.json").read_text())
    for relpath in journal["moves"]:
        staged = folder / "files" / relpath
        if staged.is_file():
            target = root / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
            _fault("mid-commit")
    if (folder / MANIFEST).is_file():
        os.replace(folder / MANIFEST, root / MANIFEST)


def _alive(folder: Path) -> bool:
    """True while the process that owns a staging folder holds its lock."""
    try:
        fd = os.open(folder / "held", os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _claimed_key(folder: Path) -> str:
    try:
        return json.loads((folder / "claim.json").read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return folder.name


def _live_claims(staging: Path) -> list[str]:
    if not staging.is_dir():
        return []
    return [_claimed_key(folder) for folder in staging.iterdir() if _alive(folder)]


def _stale_temporaries(root: Path) -> list[Path]:
    """``.NAME.PID-XXXX.tmp`` files whose writer is gone (and older unmarked ones)."""
    found = []
    for path in root.rglob(".*.tmp"):
        if STAGING in path.relative_to(root).parts or not _OLD_TMP.match(path.name):
            continue
        pid = re.search(r"\.(\d+)-[0-9a-f]{8}\.tmp$", path.name)
        if pid is None or not _pid_alive(int(pid[1])):
            found.append(path)
    return found


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fault(point: str, sig: signal.Signals = signal.SIGKILL) -> None:
    """Fault injection for tests: ``GEOVQ_FAULT_INJECT=after-journal`` kills this process
    (SIGKILL, like ``kill -9``) at that step of a commit; ``term-while-writing`` sends it
    SIGTERM (like ``kill`` or torchrun) with a temporary file half way to its place, and
    ``term-after-journal`` once a commit is journaled."""
    if os.environ.get(FAULT_ENV) == point:
        os.kill(os.getpid(), sig)


def os_error_message(error: OSError) -> str:
    """One line for a filesystem failure: what, where, and what to do."""
    where = f" {error.filename}" if error.filename else ""
    advice = {
        errno.EROFS: "the filesystem is read-only; use a writable --run-dir",
        errno.ENOSPC: "the disk is full; free some space or use another --run-dir",
        errno.EDQUOT: "the disk quota is exhausted; free some space or use another --run-dir",
        errno.EACCES: "permission denied; fix the permissions or use another --run-dir",
        errno.EPERM: "operation not permitted; fix the permissions or use another --run-dir",
        errno.ELOOP: "too many levels of symbolic links; fix the link",
        errno.ENAMETOOLONG: "the name is too long; use a shorter path",
    }.get(error.errno, "check the path and try again")
    return f"cannot access{where} ({error.strerror or error}): {advice}"
