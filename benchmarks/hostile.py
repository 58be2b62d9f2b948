"""Hostile use of the CLI, counted: many bad invocations and kill -9s against a tiny run.

Every bad invocation must exit non-zero with exactly one line on stderr (``geovq: error: ...``,
no traceback) and leave the run directory byte-identical (sha256 of every file and folder).
Every kill -9 (at the commit's fault-injection points and at timed moments) must leave a
manifest that parses, recorded outputs that match their sha256 once the next stage has run,
and no staging or temporary files after it.

    python benchmarks/hostile.py [--out hostile.json] [--kills 12]

Slow (a few minutes on 2 cores): a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from typer.testing import CliRunner  # noqa: E402

from geovq.cli import app  # noqa: E402

TINY = ("--device", "cpu", "-q")


@dataclass
class Case:
    name: str
    args: tuple[str, ...]
    mutate: Callable[[Path], None] | None = None  # applied to the run before the snapshot
    env: dict[str, str] = field(default_factory=dict)
    patch: Callable[[Path], list] | None = None  # mock.patch objects (read-only, full disk)


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "folder"
    return out


def cli(run: Path, args: tuple[str, ...], env: dict[str, str] | None = None):
    full = [args[0], "--run-dir", str(run), *args[1:]]
    return CliRunner().invoke(app, full, env=env or {}, catch_exceptions=True)


# -- the base run ------------------------------------------------------------------------------
def build_base(root: Path) -> Path:
    run = root / "base"
    steps = [
        ("train-vae", "--limit", "48", "--epochs", "1"),
        ("extract",),
        ("quantize", "--k", "8", "--name", "q"),
        ("refit-decoder", "--source", "quant/q", "--epochs", "1"),
        ("train-vqvae", "--grid", "2x4", "--k", "8", "--epochs", "1", "--name", "v"),
        ("train-prior", "--source", "quant/q", "--epochs", "1", "--layers", "2", "--hidden", "8"),
        ("train-prior", "--source", "vqvae/v", "--epochs", "1", "--layers", "2", "--hidden", "8"),
        ("sample", "--source", "quant/q", "--n", "4"),
        ("compare", "--samples", "8", "--classifier-epochs", "1"),
    ]
    for step in steps:
        result = cli(run, (*step, *TINY))
        if result.exit_code != 0:
            raise SystemExit(f"setup step {step} failed: {result.stderr}")
    return run


# -- mutations ---------------------------------------------------------------------------------
def write(relpath: str, data: bytes) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        (run / relpath).parent.mkdir(parents=True, exist_ok=True)
        (run / relpath).write_bytes(data)

    return apply


def flip(relpath: str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        data = bytearray((run / relpath).read_bytes())
        data[-1] ^= 1
        (run / relpath).write_bytes(bytes(data))

    return apply


def truncate(relpath: str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        data = (run / relpath).read_bytes()
        (run / relpath).write_bytes(data[: len(data) // 2])

    return apply


def nan_latents(run: Path) -> None:
    """Latents holding NaN, recorded as if a diverged VAE had produced them."""
    from geovq.rundir import RunDir, tensors_bytes

    rundir = RunDir(run)
    tensors, meta = rundir.load_tensors("latents.safetensors", "latents")
    tensors["train.mu"][0, 0] = float("nan")
    data = tensors_bytes(tensors, meta)
    (run / "latents.safetensors").write_bytes(data)
    manifest = json.loads((run / "manifest.json").read_text())
    digest = hashlib.sha256(data).hexdigest()
    manifest["stages"]["extract"]["outputs"]["latents.safetensors"]["sha256"] = digest
    (run / "manifest.json").write_text(json.dumps(manifest))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def image_folder(root: Path, name: str, bad: Callable[[Path], None] | None, count=4) -> Path:
    import numpy as np
    from PIL import Image

    folder = root / name
    if folder.exists():
        return folder
    for index in range(count):
        (folder / f"c{index % 2}").mkdir(parents=True, exist_ok=True)
        pixels = np.full((28, 28), index * 40, dtype=np.uint8)
        Image.fromarray(pixels, "L").save(folder / f"c{index % 2}" / f"{index}.png")
    if bad is not None:
        bad(folder / "c0" / "bad.png")
    return folder


def erofs(run: Path) -> list:
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(run)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    return [mock.patch("os.open", read_only)]


def failing_fsync(code: int) -> Callable[[Path], list]:
    def patches(run: Path) -> list:
        def fail(fd):
            raise OSError(code, os.strerror(code))

        return [mock.patch("os.fsync", fail)]

    return patches


# -- the cases ---------------------------------------------------------------------------------
BAD_NAMES = ["../../escaped", "/abs/path", "../vqvae/v", "..", ".hidden", "a/b", "x" * 65, ""]
MANIFESTS = [b"{}", b"[]", b'{"schema_version": 2, "stages": {"train-vae": "x"}}',
             b"\xff\xfe\x00 not utf-8", b"garbage{", b'{"schema_version": 2, "stages": []}',
             b'{"schema_version": 7, "stages": {}}', b"",
             b'{"schema_version": 2, "stages": {"e": {"outputs": {"../x": {"sha256": ""}}}}}',
             ]  # fmt: skip
ARTIFACTS = [
    ("vae.safetensors", ("extract",)),
    ("latents.safetensors", ("quantize", "--k", "4")),
    ("quant/q/codebook.safetensors", ("sample", "--source", "quant/q", "--mode", "random")),
    (
        "quant/q/codes.safetensors",
        ("train-prior", "--source", "quant/q", "--epochs", "1", "--layers", "2", "--hidden", "8"),
    ),  # fmt: skip
    ("quant/q/decoder.safetensors", ("sample", "--source", "quant/q", "--mode", "random")),
    ("vqvae/v/model.safetensors", ("sample", "--source", "vqvae/v", "--mode", "random")),
    ("vqvae/v/codes.safetensors", ("sample", "--source", "vqvae/v", "--mode", "random")),
    ("prior/quant-q.safetensors", ("sample", "--source", "quant/q", "--seed", "3")),
    ("prior/vqvae-v.safetensors", ("compare", "--samples", "8", "--classifier-epochs", "1")),
]


def cases(scratch: Path) -> list[Case]:
    found: list[Case] = []
    add = found.append
    for name in BAD_NAMES:
        add(Case(f"quantize --name {name!r}", ("quantize", "--k", "4", "--name", name)))
        add(Case(f"train-vqvae --name {name!r}", ("train-vqvae", "--k", "4", "--name", name)))
        add(Case(f"--vae {name!r}", ("extract", "--vae", name)))
        add(Case(f"--as {name!r}", ("extract", "--dataset", "mnist5k", "--as", name)))
        add(Case(f"--source quant/{name}", ("train-prior", "--source", f"quant/{name}")))
        add(Case(f"sample --source vqvae/{name}", ("sample", "--source", f"vqvae/{name}")))
    for source in ("q", "other/q", "quant", "/quant/q", "quant/q/x"):
        add(Case(f"--source {source!r}", ("refit-decoder", "--source", source)))
    for index, text in enumerate(MANIFESTS):
        for args in (("train-vae", "--limit", "8", "--epochs", "1"), ("quantize", "--k", "4")):
            add(Case(f"manifest #{index} then {args[0]}", args, write("manifest.json", text)))
    for relpath, args in ARTIFACTS:
        add(Case(f"flipped byte in {relpath}", args, flip(relpath)))
        add(Case(f"truncated {relpath} (--force)", (*args, "--force"), truncate(relpath)))
    add(Case("manifest.json is a folder", ("quantize", "--k", "4"), _folder("manifest.json")))
    add(Case("NaN latents, quantize", ("quantize", "--k", "4"), nan_latents))
    add(Case("NaN training", ("train-vae", "--vae", "n", "--lr", "1e10", "--batch-size", "4",
                              "--limit", "16", "--epochs", "1")))  # fmt: skip
    add(Case("NaN vq-vae", ("train-vqvae", "--name", "n", "--lr", "1e12", "--batch-size", "4",
                            "--k", "4", "--epochs", "1", "--grid", "2x4")))  # fmt: skip
    for seed in ("-1", str(2**63), "99999999999999999999999"):
        add(Case(f"--seed {seed}", ("quantize", "--k", "4", "--seed", seed)))
    toml = [b"quantize = 5\n", b"\xff\xfe[vae]\n", b"[vae\n", b"[vae]\nepochz = 1\n",
            b"[quantize]\nk = 'x'\n", b"seed = -1\n", b"[vae]\nname = '../x'\n"]  # fmt: skip
    for index, text in enumerate(toml):
        add(Case(f"geovq.toml #{index}", ("quantize", "--name", "t"), write("geovq.toml", text)))
    environments = [{"GEOVQ_STUDY__METRICS": "w2"}, {"GEOVQ_QUANTIZE": "{bad"},
                    {"GEOVQ_VAE__EPOCHS": "many"}, {"GEOVQ_SEED": "-5"},
                    {"GEOVQ_QUANTIZE__METRIC": "cos"}]  # fmt: skip
    for env in environments:
        add(Case(f"env {env}", ("quantize", "--k", "4"), env=env))
    sizes = [("sample", "--mode", "vae", "--n", "1000000000", "--force"),
             ("compare", "--samples", "100000000", "--force"),
             ("train-prior", "--source", "quant/q", "--hidden", "1000000", "--force"),
             ("train-vae", "--latent-dim", "1000000000", "--force", "--limit", "8"),
             ("train-vqvae", "--k", "1000000000", "--grid", "2x4"),
             ("quantize", "--k", "1000000000")]  # fmt: skip
    for args in sizes:
        add(Case(f"{args[0]} {args[1]} {args[2]} huge", args))
    for value_args in (("--k", "0"), ("--chunks", "5"), ("--grid", "3x3"), ("--metric", "cos"),
                       ("--fit-split", "valid"), ("--metric", "transform", "--k", "12"),
                       ("--metric", "transform", "--k", "1099511627776"),
                       ("--metric", "transform", "--codebook", "per-position")):  # fmt: skip
        add(Case(f"quantize {' '.join(value_args)}", ("quantize", *value_args)))
    folders = {
        "one image": image_folder(scratch, "one", None, count=1),
        "corrupt png": image_folder(scratch, "corrupt", lambda p: p.write_bytes(b"junk")),
        "truncated png": image_folder(
            scratch, "trunc", lambda p: p.write_bytes((p.parent / "0.png").read_bytes()[:30])
        ),
        "bomb png": image_folder(
            scratch,
            "bomb",
            lambda p: p.write_bytes(
                b"\x89PNG\r\n\x1a\n"
                + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
            ),
        ),
        "file symlink loop": image_folder(
            scratch,
            "loop",
            lambda p: (p.symlink_to(p.parent / "x.png"), (p.parent / "x.png").symlink_to(p)),
        ),
        "empty folder": _empty(scratch / "empty" / "c0"),
        "missing folder": scratch / "nope",
        "a file": image_folder(scratch, "corrupt", None) / "c0" / "0.png",
    }
    for label, folder in folders.items():
        add(Case(f"folder: {label}", ("train-vae", "--dataset", f"folder:{folder}", "--force")))
        add(Case(f"extract --as, {label}", ("extract", "--dataset", f"folder:{folder}",
                                            "--as", "x", "--force")))  # fmt: skip
    overwrite = [("train-vae", "--limit", "48", "--epochs", "2"),
                 ("extract", "--dataset", "mnist5k", "--limit", "8", "--as", "m"),
                 ("quantize", "--k", "4", "--name", "q"),
                 ("refit-decoder", "--source", "quant/q", "--epochs", "2"),
                 ("train-vqvae", "--grid", "2x4", "--k", "4", "--epochs", "1", "--name", "v"),
                 ("train-prior", "--source", "quant/q", "--epochs", "2"),
                 ("sample", "--source", "quant/q", "--n", "4", "--seed", "9"),
                 ("compare", "--samples", "9")]  # fmt: skip
    for args in overwrite:
        add(Case(f"replace {args[0]} without --force", args))
    missing = [("train-prior",), ("train-prior", "--source", "quant/none"),
               ("sample", "--source", "vqvae/none"), ("refit-decoder", "--source", "vqvae/v"),
               ("sample", "--source", "vqvae/v", "--class", "3", "--force"),
               ("sample", "--source", "quant/q", "--top-k", "99", "--force"),
               ("extract", "--vae", "other"), ("quantize", "--vae", "other", "--k", "4"),
               ("train-vae", "--resume", "--vae", "fresh"), ("sample", "--out", "/proc/x/y.png",
                "--source", "quant/q", "--force")]  # fmt: skip
    for args in missing:
        add(Case(f"missing input: {' '.join(args)}", args))
    add(Case("read-only run dir", ("quantize", "--k", "4", "--name", "ro"), patch=erofs))
    add(Case("full disk", ("quantize", "--k", "4", "--name", "full"),
             patch=failing_fsync(errno.ENOSPC)))  # fmt: skip
    add(Case("quota exceeded", ("quantize", "--k", "4", "--name", "quota"),
             patch=failing_fsync(errno.EDQUOT)))  # fmt: skip
    add(Case("permission denied", ("quantize", "--k", "4", "--name", "perm"),
             patch=failing_fsync(errno.EACCES)))  # fmt: skip
    return found


def _folder(relpath: str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        (run / relpath).unlink()
        (run / relpath).mkdir()

    return apply


def _empty(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path.parent


def run_case(base: Path, work: Path, case: Case) -> dict:
    run = work / "run"
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(base, run, symlinks=True)
    if case.mutate:
        case.mutate(run)
    before = tree_digest(run)
    with ExitStack() as stack:
        for patcher in case.patch(run) if case.patch else []:
            stack.enter_context(patcher)
        result = cli(run, (*case.args, "--device", "cpu", "-q"), env=case.env)
    lines = result.stderr.strip().splitlines()
    traceback = result.exception is not None and not isinstance(result.exception, SystemExit)
    one_line = (
        result.exit_code != 0
        and len(lines) == 1
        and lines[0].startswith("geovq: error: ")
        and not traceback
    )
    identical = tree_digest(run) == before
    return {
        "case": case.name,
        "exit": result.exit_code,
        "one_line": one_line,
        "identical": identical,
        "stderr": (lines[-1] if lines else repr(result.exception))[:300],
    }


# -- kill -9 -----------------------------------------------------------------------------------
def kill_cases(base: Path, work: Path, timed: int) -> list[dict]:
    results = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "geovq"]
    jobs = []
    for point in ("before-commit", "after-journal", "mid-commit"):
        jobs.append((f"quantize killed at {point}", ["quantize", "--k", "4", "--name", "kq"],
                     {"GEOVQ_FAULT_INJECT": point}, None))  # fmt: skip
        jobs.append((f"train-vae --force killed at {point}",
                     ["train-vae", "--limit", "48", "--epochs", "1", "--force"],
                     {"GEOVQ_FAULT_INJECT": point}, None))  # fmt: skip
    for index in range(timed):
        delay = 1.0 + 0.6 * index
        train = ["train-vae", "--limit", "48", "--epochs", "3", "--force"]
        jobs.append((f"train-vae killed after {delay:.1f} s", train, {}, delay))
        quantize = ["quantize", "--k", "8", "--name", "kt", "--metric", "geodesic"]
        jobs.append((f"quantize killed after {delay:.1f} s", quantize, {}, delay))
    for name, args, extra, delay in jobs:
        run = work / "kill"
        if run.exists():
            shutil.rmtree(run)
        shutil.copytree(base, run, symlinks=True)
        full = [*command, *args, "--run-dir", str(run), *TINY]
        process = subprocess.Popen(
            full, env={**env, **extra}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if delay is not None:
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=600)
        killed = process.returncode == -signal.SIGKILL
        results.append({"case": name, "killed": killed, **_survived(run)})
    return results


def _survived(run: Path) -> dict:
    """After the kill: the manifest parses; the next stage cleans up and all records hold."""
    from geovq.rundir import RunDir

    problems = []
    try:
        json.loads((run / "manifest.json").read_text())
    except (OSError, ValueError) as error:
        problems.append(f"manifest unreadable after kill: {error}")
    probe = cli(run, ("quantize", "--k", "4", "--name", "probe", *TINY))
    if probe.exit_code != 0:
        problems.append(f"next stage failed: {probe.stderr.strip()}")
    rundir = RunDir(run)
    manifest = rundir.manifest()
    for key in manifest["stages"]:
        changed = rundir.changed_outputs(key, manifest)
        if changed:
            problems.append(f"{key}: outputs differ from their record: {changed}")
    leftovers = [str(p.relative_to(run)) for p in run.rglob("*") if p.name.endswith(".tmp")]
    if (run / ".staging").exists():
        leftovers.append(".staging")
    if leftovers:
        problems.append(f"leftovers: {leftovers}")
    return {"survived": not problems, "problems": problems}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--kills", type=int, default=6, help="timed kills per stage")
    parser.add_argument("--only", default="", help="run only cases whose name contains this")
    options = parser.parse_args()
    os.environ.pop("GEOVQ_DEBUG", None)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="geovq-hostile-") as tmp:
        root = Path(tmp)
        base = build_base(root)
        results = []
        for case in cases(root / "data"):
            if options.only and options.only not in case.name:
                continue
            outcome = run_case(base, root / "work", case)
            results.append(outcome)
            mark = "ok " if outcome["one_line"] and outcome["identical"] else "BAD"
            print(f"{mark} {outcome['case']}: {outcome['stderr']}", flush=True)
        kills = [] if options.only else kill_cases(base, root / "work", options.kills)
        for kill in kills:
            print(f"{'ok ' if kill['survived'] else 'BAD'} {kill['case']} {kill['problems']}")
    good = sum(r["one_line"] and r["identical"] for r in results)
    summary = {
        "bad_inputs": len(results),
        "one_line": sum(r["one_line"] for r in results),
        "byte_identical": sum(r["identical"] for r in results),
        "one_line_and_identical": good,
        "kills": len(kills),
        "kills_survived": sum(k["survived"] for k in kills),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary, indent=2))
    if options.out:
        options.out.write_text(json.dumps({"summary": summary, "cases": results, "kills": kills}))


if __name__ == "__main__":
    main()
