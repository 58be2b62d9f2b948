"""Benchmark the quantizers: W2 k-means against scikit-learn, geodesic k-medoids at full scale.

    python benchmarks/quantize.py                 # 40k and 480k points (several minutes)
    python benchmarks/quantize.py --quick         # smaller sizes (about a minute)
    python benchmarks/quantize.py --latents RUN/latents.safetensors

Points are chunk Gaussians [mu, sigma] (C = 4, so 8 features): synthetic latent-like ones (a
Gaussian mixture for mu, sigma in (0.05, 1) depending on the component), or the train split of
a latents file (train.mu, train.logvar) cut into --chunks chunks. Each geodesic method runs in a
subprocess of its own, so its peak RSS is its own; "after imports" is that process's RSS
before it loads any data.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SMALL, LARGE = 40_000, 480_000
QUICK_SMALL, QUICK_LARGE = 40_000, 120_000
DENSE_POINTS, QUICK_DENSE_POINTS = 16_000, 4_000


def main() -> None:
    args = _parse_args()
    if args.child:
        print(json.dumps(_run_child(args)))
        return
    small, large = (QUICK_SMALL, QUICK_LARGE) if args.quick else (SMALL, LARGE)
    dense_points = QUICK_DENSE_POINTS if args.quick else DENSE_POINTS
    print(f"data: {_describe_data(args)}; K = {args.k}; restarts = {args.restarts}")
    if args.part in ("all", "kmeans"):
        for n in (small, large):
            _benchmark_kmeans(args, n)
    if args.part in ("all", "geodesic"):
        _benchmark_geodesic(args, large, dense_points)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--latents", type=Path, help="safetensors file with train.mu/logvar")
    parser.add_argument("--chunks", type=int, default=8, help="chunks per latent (L)")
    parser.add_argument("--k", type=int, default=256, help="codebook size")
    parser.add_argument("--restarts", type=int, default=1, help="k-means restarts / n_init")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per k-means size")
    parser.add_argument(
        "--iters", type=int, default=300, help="k-means iteration cap, both (sklearn: max_iter)"
    )
    parser.add_argument(
        "--faiss-iters", type=int, default=100, help="faiss.Kmeans niter (a fixed count)"
    )
    parser.add_argument(
        "--skip-torch", action="store_true", help="no torch-on-CPU k-means (the GPU path)"
    )
    parser.add_argument("--only", help="comma-separated k-means candidates to run (default all)")
    parser.add_argument("--part", choices=["all", "kmeans", "geodesic"], default="all")
    parser.add_argument("--knn", type=int, default=10, help="neighbours in the geodesic graph")
    parser.add_argument("--skip-dense", action="store_true", help="no dense reference")
    parser.add_argument("--child", choices=["geodesic", "dense", "geodesic-subsample"])
    parser.add_argument("--points", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pool", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def load_points(args: argparse.Namespace, n: int) -> np.ndarray:
    """(n, 2C) float64 chunk Gaussians [mu, sigma]; the same n always gives the same points."""
    if args.latents is None:
        return synthetic_points(n, seed=0)
    from safetensors.numpy import load_file

    tensors = load_file(str(args.latents))
    mu, logvar = tensors["train.mu"].astype(np.float64), tensors["train.logvar"]
    sigma = np.exp(0.5 * logvar.astype(np.float64))
    chunk = mu.shape[1] // args.chunks
    points = np.concatenate(
        [mu.reshape(-1, args.chunks, chunk), sigma.reshape(-1, args.chunks, chunk)], axis=2
    ).reshape(-1, 2 * chunk)
    if n > len(points):
        raise SystemExit(f"{args.latents} has {len(points)} chunks, {n} asked: pass --quick")
    return points[:n]


def synthetic_points(n: int, seed: int) -> np.ndarray:
    """Latent-like chunks: mu from a 64-component mixture in 4 dims, log sigma from the
    component plus noise, sigma clipped to (0.05, 1)."""
    rng = np.random.default_rng(seed)
    component = rng.integers(0, 64, n)
    mu = rng.normal(scale=1.5, size=(64, 4))[component] + rng.normal(scale=0.5, size=(n, 4))
    log_sigma = rng.normal(-1.0, 0.5, size=(64, 4))[component] + rng.normal(0, 0.3, (n, 4))
    return np.hstack([mu, np.clip(np.exp(log_sigma), 0.05, 1.0)])


def _describe_data(args: argparse.Namespace) -> str:
    if args.latents is None:
        return "synthetic latent-like chunk Gaussians (8 features)"
    return f"{args.latents} (train split, {args.chunks} chunks per latent)"


# --- W2 k-means against scikit-learn -------------------------------------------------------


def _benchmark_kmeans(args: argparse.Namespace, n: int) -> None:
    """Every CPU k-means candidate on the same points, same K, iteration cap and seeds:
    time, and inertia recomputed in float64 for all (ratios against scikit-learn)."""
    import torch

    points = load_points(args, n)
    points_t = torch.from_numpy(points.astype(np.float32))
    candidates = _kmeans_candidates(args)
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    inertia: dict[str, list[float]] = {name: [] for name in candidates}
    iterations: dict[str, list[int]] = {name: [] for name in candidates}
    for repeat in range(args.repeats):
        for name, run in candidates.items():
            started = time.perf_counter()
            centers, iters = run(points_t, repeat)
            seconds[name].append(time.perf_counter() - started)
            inertia[name].append(_inertia(points, np.asarray(centers, dtype=np.float64)))
            iterations[name].append(iters)
    med = statistics.median
    print(
        f"\nW2 k-means, {n:,} points, K = {args.k}, at most {args.iters} iterations, "
        f"median of {args.repeats}, {_threads()} threads:"
    )
    reference = "sklearn" if "sklearn" in candidates else next(iter(candidates))
    reference_s, reference_inertia = med(seconds[reference]), med(inertia[reference])
    for name in candidates:
        ratios = np.array(inertia[name]) / np.array(inertia[reference])
        print(
            f"  {name:20} {med(seconds[name]):7.2f} s  inertia {med(inertia[name]):14,.1f}  "
            f"iterations {med(iterations[name]):5g}  vs {reference}: time "
            f"{med(seconds[name]) / reference_s:5.2f}, inertia "
            f"{med(inertia[name]) / reference_inertia:.4f} (per-seed mean {ratios.mean():.4f})"
        )


def _kmeans_candidates(args: argparse.Namespace) -> dict:
    """name -> run(points (N, F) float32 tensor, seed) -> (centers (K, F), iterations)."""
    import torch
    from sklearn.cluster import KMeans

    from geovq.quant.kmeans import kmeans
    from geovq.quant.kmeans_torch import kmeans_torch

    def ours(points, seed):
        result = kmeans(points, args.k, restarts=args.restarts, iters=args.iters, seed=seed)
        return result.centers.numpy(), result.iterations

    def torch_cpu(points, seed):
        result = kmeans_torch(
            points, args.k, device="cpu", restarts=args.restarts, iters=args.iters, seed=seed
        )
        return result.centers.numpy(), result.iterations

    def sklearn(points, seed):
        model = KMeans(args.k, n_init=args.restarts, max_iter=args.iters, random_state=seed)
        model.fit(points.numpy())
        return model.cluster_centers_, int(model.n_iter_)

    candidates = {"ours (numpy)": ours, "torch (cpu)": torch_cpu, "sklearn": sklearn}
    if args.skip_torch:
        del candidates["torch (cpu)"]
    if args.only:
        candidates = {k: v for k, v in candidates.items() if k in args.only.split(",")}
    try:
        import faiss
    except ImportError:
        print("  (faiss-cpu not installed: pip install faiss-cpu)")
        return candidates

    def faiss_fit(points, seed, init=None):
        model = faiss.Kmeans(
            points.shape[1],
            args.k,
            niter=args.faiss_iters,
            nredo=args.restarts,
            seed=seed + 1,
            max_points_per_centroid=1 << 30,  # no subsampling
            verbose=False,
        )
        model.train(np.ascontiguousarray(points.numpy()), init_centroids=init)
        return model.centroids, args.faiss_iters

    def faiss_seeded(points, seed):
        from geovq.quant.kmeans import kmeans_plus_plus

        seeds = kmeans_plus_plus(points, args.k, torch.Generator().manual_seed(seed))
        return faiss_fit(points, seed, init=np.ascontiguousarray(seeds.numpy()))

    def polished(polish_iters):
        def run(points, seed):
            centers, faiss_iters = faiss_fit(points, seed)
            init = torch.from_numpy(centers)
            result = kmeans(points, args.k, iters=polish_iters, seed=seed, init=init)
            return result.centers.numpy(), faiss_iters + result.iterations

        return run

    candidates["faiss"] = faiss_fit
    candidates["faiss from k-means++"] = faiss_seeded
    candidates["faiss + 5 Lloyd"] = polished(5)
    candidates[f"faiss + <={args.iters} Lloyd"] = polished(args.iters)
    if args.only:
        candidates = {k: v for k, v in candidates.items() if k in args.only.split(",")}
    return candidates


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _inertia(points: np.ndarray, centers: np.ndarray) -> float:
    """Float64 inertia of the nearest-center assignment, the same yardstick for both."""
    from geovq.quant.distances import nearest_center_np

    return float(nearest_center_np(points, centers.astype(np.float64))[1].sum())


# --- geodesic k-medoids at scale, beside the dense reference --------------------------------


def _benchmark_geodesic(args: argparse.Namespace, n: int, dense_points: int) -> None:
    print(f"\ngeodesic k-medoids, K = {args.k}, knn = {args.knn} (each in its own process):")
    runs = [("geodesic", n), ("geodesic-subsample", dense_points)]
    if not args.skip_dense:
        runs.append(("dense", dense_points))
    for child, points in runs:
        report = _spawn(args, child, points, pool=n)
        label = {
            "geodesic": "ours, all points",
            "geodesic-subsample": "ours, subsample",
            "dense": "dense reference",
        }[child]
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in report["stages"].items())
        print(
            f"  {label:17} {points:>9,} points  {report['seconds']:7.1f} s  "
            f"peak RSS {report['peak_rss_mib']:7,.0f} MiB "
            f"(after imports {report['base_rss_mib']:,.0f})  objective {report['objective']:,.1f}"
        )
        print(f"  {'':17} {stages}; {report['note']}")


def _spawn(args: argparse.Namespace, child: str, points: int, pool: int) -> dict:
    """Run one method in a fresh process on `points` points drawn from the first `pool`."""
    command = [sys.executable, __file__, "--child", child, "--points", str(points)]
    command += ["--pool", str(pool)]
    command += ["--k", str(args.k), "--knn", str(args.knn), "--chunks", str(args.chunks)]
    if args.latents is not None:
        command += ["--latents", str(args.latents)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _run_child(args: argparse.Namespace) -> dict:
    import geovq.quant.geodesic  # noqa: F401  (imports count in the baseline, not the method)

    base_rss = _peak_rss_mib()
    points = load_points(args, args.pool)
    if args.points < args.pool:
        sample = np.random.default_rng(1).choice(args.pool, args.points, replace=False)
        points = points[np.sort(sample)]
    started = time.perf_counter()
    if args.child == "dense":
        report = _dense_reference(points, args.k, args.knn)
    else:
        report = _ours(points, args.k, args.knn)
    report["seconds"] = time.perf_counter() - started
    report["peak_rss_mib"] = _peak_rss_mib()
    report["base_rss_mib"] = base_rss
    return report


def _ours(points: np.ndarray, k: int, knn: int) -> dict:
    from geovq.quant.geodesic import geodesic_kmedoids

    started = time.perf_counter()
    fit = geodesic_kmedoids(points, k, knn=knn, seed=0)
    return {
        "objective": fit.objective,
        "stages": {"total": time.perf_counter() - started},
        "note": f"iterations {fit.iterations}, components joined {fit.components_joined}",
    }


def _dense_reference(points: np.ndarray, k: int, knn: int) -> dict:
    """The all-pairs approach: dense shortest paths on the same kNN graph, then alternate
    k-medoids (k-means++ seeding on geodesic distance) on the dense matrix."""
    from scipy.sparse.csgraph import shortest_path

    from geovq.quant.geodesic import connect_components, knn_graph

    stages = {}
    started = time.perf_counter()
    graph, joined = connect_components(knn_graph(points, knn), points)
    stages["graph"] = time.perf_counter() - started
    started = time.perf_counter()
    dense = shortest_path(graph, method="D", directed=False)
    stages["all-pairs paths"] = time.perf_counter() - started
    started = time.perf_counter()
    medoids, objective, iterations = _dense_kmedoids(dense, k, np.random.default_rng(0))
    stages["k-medoids"] = time.perf_counter() - started
    return {
        "objective": objective,
        "stages": stages,
        "note": f"iterations {iterations}, components joined {joined}, "
        f"matrix {dense.nbytes / 2**20:,.0f} MiB",
    }


def _dense_kmedoids(dense: np.ndarray, k: int, rng: np.random.Generator, iters: int = 20):
    n = len(dense)
    medoids = [int(rng.integers(n))]
    closest = dense[medoids[0]] ** 2
    for _ in range(1, k):
        pick = int(np.searchsorted(np.cumsum(closest), rng.random() * closest.sum(), "right"))
        medoids.append(min(pick, n - 1))
        closest = np.minimum(closest, dense[medoids[-1]] ** 2)
    medoids = np.array(medoids)
    iterations = 0
    while iterations < iters:
        iterations += 1
        labels = dense[:, medoids].argmin(1)
        updated = medoids.copy()
        for cell in range(k):
            members = np.flatnonzero(labels == cell)
            if len(members):
                updated[cell] = members[dense[np.ix_(members, members)].sum(1).argmin()]
        if np.array_equal(updated, medoids):
            break
        medoids = updated
    objective = float(dense[:, medoids].min(1).sum())
    return medoids, objective, iterations


def _peak_rss_mib() -> float:
    """This process's peak RSS. getrusage's ru_maxrss survives execve (a child would report
    its parent's peak), so read VmHWM, which starts afresh with the new program."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
