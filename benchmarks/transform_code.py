"""Distortion of the transform code against chunk k-means at the same bits, on one VAE of a run.

Run: python benchmarks/transform_code.py --run-dir RUN [--vae NAME] [--k 256]. Prints one
table; not a test. Each code spends L log2 K bits per image (L = the VAE's chunks: its
positions, or 8 for a flat latent) and is decoded by the VAE's own decoder on the test split
(no refit). The peer is euclidean k-means on the chunks (what ``quantize --metric euclidean``
fits); between the two, greedy bits on the latent's own dimensions (no rotation) separates
what the bit allocation gains from what the rotation gains.
"""

from __future__ import annotations

import argparse
import time

import torch

from geovq.artifacts import Reader, VaeFiles, load_latents, load_vae, split_images
from geovq.metrics import decoded_mse
from geovq.quant.codebook import assign_codes, chunk_latents, codeword_latents, fit_codebook
from geovq.quant.scalar import nearest_level
from geovq.quant.transform import allocate_bits
from geovq.rundir import RunDir
from geovq.stages.quantize import FLAT_DEFAULT_CHUNKS

CPU = torch.device("cpu")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--vae", default=None, help="a named VAE of the run (default: the flat)")
    parser.add_argument("--k", type=int, default=256)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    reader = Reader(RunDir(args.run_dir))
    files = VaeFiles(args.vae)
    vae, _ = load_vae(reader, CPU, files)
    latents, meta = load_latents(reader, files)
    images = split_images(reader, meta, files)["test"]
    chunks = meta.grid[0] * meta.grid[1] if meta.grid else FLAT_DEFAULT_CHUNKS
    fit_mu, test_mu = latents["train.mu"], latents["test.mu"]
    sigma = {s: torch.exp(0.5 * latents[f"{s}.logvar"]) for s in ("train", "test")}
    bits = chunks * (args.k.bit_length() - 1)
    print(f"{files.vae}: {fit_mu.shape[1]} dimensions, {chunks} chunks, {bits} bits per image")
    print(
        f"continuous mu                 : MSE {decoded_mse(vae.decode, test_mu, images, CPU):.5f}"
    )
    rows = []
    for label, fit_and_code in (
        ("euclidean k-means (the peer)", _chunk_code("euclidean")),
        ("greedy bits, no rotation", _per_dimension_code),
        ("transform code", _chunk_code("transform")),
    ):
        started = time.perf_counter()
        decoded = fit_and_code(fit_mu, sigma, test_mu, chunks, args.k)
        seconds = time.perf_counter() - started
        rows.append((label, decoded_mse(vae.decode, decoded, images, CPU), seconds))
    peer = rows[0][1]
    for label, mse, seconds in rows:
        print(
            f"{label:30s}: MSE {mse:.5f}  ratio to the peer {mse / peer:.3f}  fit {seconds:.1f} s"
        )


def _chunk_code(metric: str):
    def code(fit_mu, sigma, test_mu, chunks, k):
        fit = fit_codebook(
            chunk_latents(fit_mu, chunks), chunk_latents(sigma["train"], chunks), k, metric
        )
        codes = assign_codes(
            fit, chunk_latents(test_mu, chunks), chunk_latents(sigma["test"], chunks)
        )
        return codeword_latents(fit.codebook, codes)

    return code


def _per_dimension_code(fit_mu, sigma, test_mu, chunks, k):
    total = chunks * (k.bit_length() - 1)
    bits, levels = allocate_bits(fit_mu.double(), total)
    columns = [
        levels[dim, nearest_level(test_mu[:, dim].double().contiguous(), levels[dim, : 2**b])]
        for dim, b in enumerate(bits.tolist())
    ]
    return torch.stack(columns, dim=1).float()


if __name__ == "__main__":
    main()
