"""The Python parts of benchmarks/gpu_check.sh: each writes one JSON file of figures.

    python benchmarks/gpu_check.py train    --device cuda --out OUT   # VAE images/s, bf16 vs fp32
    python benchmarks/gpu_check.py kmeans   --device cuda --out OUT   # 4.8 M points, GPU vs CPU
    python benchmarks/gpu_check.py geodesic --device cuda --out OUT   # 480k points, GPU kNN
    torchrun --nproc-per-node 2 benchmarks/gpu_check.py ddp --device cuda --backend gloo --out OUT
    python benchmarks/gpu_check.py summary  --out OUT                  # one table of everything

--tiny shrinks every size so that the whole check runs on a CPU in seconds (the test does).
A part writes its JSON after every measurement, so a part stopped by its timeout keeps what
it had measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCHEMA_VERSION = 1


class Figures:
    """A part's figures, rewritten to OUT/<part>.json after every measurement."""

    def __init__(self, out: Path, part: str, args: argparse.Namespace) -> None:
        self.path = out / f"{part}.json"
        self.data = {
            "schema_version": SCHEMA_VERSION,
            "part": part,
            "device": args.device,
            "device_name": _device_name(args.device),
            "tiny": args.tiny,
            "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(),
            "results": {},
        }
        self.save()

    def add(self, key: str, value) -> None:
        self.data["results"][key] = value
        self.save()
        print(f"{self.path.stem}: {key} = {json.dumps(value)}", flush=True)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2, default=str) + "\n")


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def _peak_gpu_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# --- (b) VAE training throughput -------------------------------------------------------------


def _train_images(count: int, device: torch.device) -> torch.Tensor:
    """mnist5k's train images tiled to `count` rows, uint8 on the device."""
    from geovq.data import load_dataset
    from geovq.settings import DataSettings

    images = load_dataset(DataSettings()).splits["train"].images
    repeats = -(-count // images.shape[0])
    return images.repeat(repeats, 1, 1, 1)[:count].to(device)


def _vae_step(model, optimizer, images_u8, generator, device, bf16: bool) -> torch.Tensor:
    from geovq.data import to_float
    from geovq.models.vae import kl_divergence, reconstruction_loss

    images = to_float(images_u8)
    with _autocast(device, bf16):
        logits, mu, logvar = model(images, generator)
        loss = reconstruction_loss(logits, images, "bce") + kl_divergence(mu, logvar)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def part_train(args: argparse.Namespace) -> None:
    from geovq.models.vae import VAE, VAEConfig
    from geovq.rundir import RunDir
    from geovq.training import TrainConfig, train

    figures = Figures(args.out, "train", args)
    device = torch.device(args.device)
    batch_sizes = [16] if args.tiny else [128, 512, 1024]
    min_seconds = 0.0 if args.tiny else 2.0
    min_steps = 2 if args.tiny else 5
    images = _train_images(64 if args.tiny else 32768, device)
    for batch_size in batch_sizes:
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            model = VAE(VAEConfig()).to(device).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            generator = torch.Generator(device=device).manual_seed(0)
            bf16 = precision == "bf16"
            order = torch.randperm(images.shape[0], device=device)
            batches = [images[i] for i in order.split(batch_size) if len(i) == batch_size]
            for batch in batches[: 1 if args.tiny else 3]:  # warm-up: kernels, allocator
                _vae_step(model, optimizer, batch, generator, device, bf16)
            _sync(device)
            steps, started = 0, time.perf_counter()
            while steps < min_steps or time.perf_counter() - started < min_seconds:
                loss = _vae_step(
                    model, optimizer, batches[steps % len(batches)], generator, device, bf16
                )
                steps += 1
                if steps % 10 == 0:
                    _sync(device)
            _sync(device)
            elapsed = time.perf_counter() - started
            figures.add(
                f"bs{batch_size}_{precision}",
                {
                    "images_per_s": round(steps * batch_size / elapsed, 1),
                    "steps": steps,
                    "seconds": round(elapsed, 3),
                    "last_loss": float(loss),
                    "loss_finite": bool(torch.isfinite(loss)),
                },
            )
    # geovq's own loop (bf16 autocast on a GPU) for one epoch, checkpoint included
    torch.manual_seed(0)
    model = VAE(VAEConfig()).to(device)
    batch_size = batch_sizes[-1]

    def step(batch, generator):
        from geovq.data import to_float
        from geovq.models.vae import kl_divergence, reconstruction_loss

        x = to_float(batch[0])
        logits, mu, logvar = model(x, generator)
        rec, kl = reconstruction_loss(logits, x, "bce"), kl_divergence(mu, logvar)
        return rec + kl, {"loss": rec + kl}

    with tempfile.TemporaryDirectory() as folder:
        epochs = 1 if args.tiny else 2
        config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=1e-3, seed=0)
        started = time.perf_counter()
        result = train(model, [images], step, dict, config, RunDir(folder), "checkpoints/b.st")
        wall = time.perf_counter() - started
    figures.add(
        f"geovq_train_bs{batch_size}",
        {
            "images_per_s_train_loop": round(result.images_per_s, 1),
            "epochs": epochs,
            "wall_s": round(wall, 3),
            "epoch_loss": [round(h["train_loss"], 4) for h in result.history],
        },
    )
    figures.add("peak_gpu_mib", _peak_gpu_mib(device))


# --- (c) k-means at scale: GPU torch path vs CPU paths ----------------------------------------


def latent_like_points(n: int, seed: int = 0) -> np.ndarray:
    """(n, 8) float32 chunk Gaussians [mu, sigma] as benchmarks/quantize.py draws them."""
    from benchmarks.quantize import synthetic_points

    return synthetic_points(n, seed).astype(np.float32)


def _exact_inertia(points: torch.Tensor, centers: torch.Tensor, device: torch.device) -> float:
    from geovq.quant.distances import nearest_center

    return float(nearest_center(points, centers.double(), device=device)[1].sum())


def part_kmeans(args: argparse.Namespace) -> None:
    from geovq.quant.distances import nearest_center
    from geovq.quant.kmeans import kmeans
    from geovq.quant.kmeans_torch import kmeans_torch

    figures = Figures(args.out, "kmeans", args)
    device = torch.device(args.device)
    n, n_cpu, k = (4_000, 2_000, 16) if args.tiny else (4_800_000, 480_000, 256)
    iters = 100
    figures.add("settings", {"points": n, "cpu_points": n_cpu, "k": k, "iters": iters, "dim": 8})
    started = time.perf_counter()
    points = torch.from_numpy(latent_like_points(n))
    figures.add("generate_s", round(time.perf_counter() - started, 2))

    def timed_kmeans(label: str, data: torch.Tensor, run) -> None:
        started = time.perf_counter()
        centers, iterations = run(data)
        seconds = time.perf_counter() - started
        inertia = _exact_inertia(data, centers, device)
        figures.add(label, {"seconds": round(seconds, 3), "inertia": inertia, "iters": iterations})

    def torch_path(data):
        result = kmeans_torch(data, k, device=device, iters=iters, seed=0)
        return result.centers, result.iterations

    def numpy_path(data):
        result = kmeans(data, k, iters=iters, seed=0)
        return result.centers, result.iterations

    def faiss_path(data):
        import faiss

        model = faiss.Kmeans(
            data.shape[1], k, niter=iters, seed=1, max_points_per_centroid=1 << 30, verbose=False
        )
        model.train(np.ascontiguousarray(data.numpy(), dtype=np.float32))
        return torch.from_numpy(model.centroids), iters

    def sklearn_path(data):
        from sklearn.cluster import KMeans

        model = KMeans(n_clusters=k, n_init=1, max_iter=iters, random_state=0).fit(data.numpy())
        return torch.from_numpy(model.cluster_centers_), int(model.n_iter_)

    timed_kmeans(f"torch_{device.type}_{n}", points, torch_path)
    timed_kmeans(f"torch_{device.type}_{n}_again", points, torch_path)  # warm, and determinism
    figures.add("peak_gpu_mib_kmeans", _peak_gpu_mib(device))
    try:
        import faiss  # noqa: F401

        timed_kmeans(f"faiss_cpu_{n}", points, faiss_path)
        timed_kmeans(f"faiss_cpu_{n_cpu}", points[:n_cpu], faiss_path)
    except ImportError:
        figures.add("faiss_cpu", "not installed")
    timed_kmeans(f"torch_{device.type}_{n_cpu}", points[:n_cpu], torch_path)
    timed_kmeans(f"numpy_cpu_{n_cpu}", points[:n_cpu], numpy_path)
    timed_kmeans(f"sklearn_cpu_{n_cpu}", points[:n_cpu], sklearn_path)
    # code assignment alone: every point to its nearest of K codewords
    centers = points[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k]]
    for label, rows, where in (
        (f"assign_{device.type}_{n}", n, device),
        (f"assign_numpy_cpu_{n_cpu}", n_cpu, None),
    ):
        started = time.perf_counter()
        nearest_center(points[:rows], centers, device=where)
        figures.add(label, {"seconds": round(time.perf_counter() - started, 3)})


# --- (d) geodesic k-medoids on 480k points with the GPU kNN ----------------------------------


def part_geodesic(args: argparse.Namespace) -> None:
    from geovq.quant.geodesic import geodesic_kmedoids, knn_graph

    figures = Figures(args.out, "geodesic", args)
    device = torch.device(args.device)
    n, k, knn = (1_500, 16, 10) if args.tiny else (480_000, 256, 10)
    restarts, iters = 1, 20
    figures.add("settings", {"points": n, "k": k, "knn": knn, "restarts": restarts, "iters": iters})
    points = latent_like_points(n).astype(np.float64)
    started = time.perf_counter()
    graph_device = knn_graph(points, knn, device=device)
    figures.add(
        f"knn_graph_{device.type}",
        {"seconds": round(time.perf_counter() - started, 3), "peak_gpu_mib": _peak_gpu_mib(device)},
    )
    started = time.perf_counter()
    graph_tree = knn_graph(points, knn)
    tree_seconds = time.perf_counter() - started
    differ = graph_device != graph_tree
    figures.add(
        "knn_graph_cpu_kdtree",
        {
            "seconds": round(tree_seconds, 3),
            "edges": int(graph_tree.nnz),
            "edges_differing": int(differ.nnz),
            "max_abs_length_difference": float(abs(graph_device - graph_tree).max()),
        },
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    fit = geodesic_kmedoids(
        points, k, knn=knn, iters=iters, restarts=restarts, seed=0, device=device
    )
    figures.add(
        f"kmedoids_{device.type}_knn",
        {
            "seconds": round(time.perf_counter() - started, 3),
            "objective": fit.objective,
            "iterations": fit.iterations,
            "components_joined": fit.components_joined,
            "peak_gpu_mib": _peak_gpu_mib(device),
            "peak_rss_mib": _peak_rss_mib(),
        },
    )


# --- (e) DDP: one process per rank under torchrun ---------------------------------------------


def part_ddp(args: argparse.Namespace) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from geovq.models.vae import VAE, VAEConfig

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(args.device)
    if device.type == "cuda":  # several ranks may share one GPU
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    dist.init_process_group(args.backend)
    global_batch = 16 if args.tiny else 1024
    steps = 2 if args.tiny else 40
    per_rank = global_batch // world
    images = _train_images(global_batch * 4, device)
    torch.manual_seed(0)
    model = VAE(VAEConfig()).to(device)
    ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-3)
    generator = torch.Generator(device=device).manual_seed(rank)
    bf16 = device.type == "cuda"

    def one_step(step: int) -> torch.Tensor:
        start = (step % 4) * global_batch + rank * per_rank
        return _vae_step(ddp, optimizer, images[start : start + per_rank], generator, device, bf16)

    for step in range(3):
        one_step(step)
    _sync(device)
    dist.barrier()
    started = time.perf_counter()
    for step in range(steps):
        loss = one_step(step)
    _sync(device)
    dist.barrier()
    elapsed = time.perf_counter() - started
    if rank == 0:
        args.device = str(device)
        figures = Figures(args.out, f"ddp_{args.backend}_{world}", args)
        figures.add(
            "throughput",
            {
                "world_size": world,
                "backend": args.backend,
                "global_batch": global_batch,
                "bf16": bf16,
                "images_per_s": round(steps * global_batch / elapsed, 1),
                "seconds": round(elapsed, 3),
                "last_loss": float(loss),
            },
        )
    dist.destroy_process_group()


# --- summary ----------------------------------------------------------------------------------


def part_summary(args: argparse.Namespace) -> None:
    """Every part's figures in one summary.json, and a compact table on stdout."""
    summary = {"schema_version": SCHEMA_VERSION, "parts": {}}
    status_file = args.out / "status.tsv"
    if status_file.exists():
        for line in status_file.read_text().splitlines():
            name, rc, seconds = line.split("\t")
            summary["parts"][name] = {"rc": int(rc), "wall_s": float(seconds)}
    figures = {}
    for path in sorted(args.out.glob("*.json")):
        if path.name == "summary.json":
            continue
        try:
            figures[path.stem] = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            figures[path.stem] = {"error": "unreadable"}
    summary["figures"] = figures
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("part                 rc   wall s")
    for name, status in summary["parts"].items():
        print(f"{name:20} {status['rc']:>3} {status['wall_s']:8.1f}")
    for stem, data in figures.items():
        for key, value in data.get("results", {}).items():
            print(f"{stem}.{key}: {_compact(value)}")
        if "metrics" in data:  # a geovq stage's --json result
            picked = {k: data["metrics"].get(k) for k in ("images_per_s", "test_loss", "epochs")}
            print(f"{stem}: {_compact(picked)}")


def _compact(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_compact(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["train", "kmeans", "geodesic", "ddp", "summary"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="CPU-sized everything")
    parser.add_argument("--backend", default="gloo", help="ddp: nccl or gloo")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    parts = {
        "train": part_train,
        "kmeans": part_kmeans,
        "geodesic": part_geodesic,
        "ddp": part_ddp,
        "summary": part_summary,
    }
    parts[args.part](args)


if __name__ == "__main__":
    main()
