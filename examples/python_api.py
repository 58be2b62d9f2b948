"""The study from Python: each stage is a function, and the numerics are plain library calls.

python examples/python_api.py [RUN_DIR] [--quick]
"""

from __future__ import annotations

import sys

import torch

from geovq.metrics import summarize_codes
from geovq.quant.codebook import assign_codes, chunk_latents, fit_codebook
from geovq.rundir import RunDir
from geovq.settings import load_settings
from geovq.stages import compare, extract, quantize, train_prior, train_vae, train_vqvae


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    quick = "--quick" in sys.argv
    run_dir = args[0] if args else "runs/python-api"
    epochs = 1 if quick else 20
    k = 32 if quick else 256
    settings = load_settings(
        {
            "run_dir": run_dir,
            "data": {"limit": 200} if quick else {},
            "vae": {"epochs": epochs},
            "vqvae": {"epochs": epochs, "grid": "2x4", "k": k},
            "quantize": {"k": k},
            "prior": {"epochs": epochs},
            "compare": {"samples": 64 if quick else 500},
        }
    )
    # 1. Stages, exactly as the CLI runs them (each records itself in the manifest).
    train_vae.run(settings)
    extract.run(settings)

    # 2. The numerics directly: W2 codebook on the train latents' chunks, codes for test.
    latents, _ = RunDir(run_dir).load_tensors("latents.safetensors", "latents")
    mu = chunk_latents(latents["train.mu"], 8)
    sigma = chunk_latents(torch.exp(0.5 * latents["train.logvar"]), 8)
    fit = fit_codebook(mu, sigma, k, "w2", seed=0)
    test_codes = assign_codes(
        fit,
        chunk_latents(latents["test.mu"], 8),
        chunk_latents(torch.exp(0.5 * latents["test.logvar"]), 8),
    )
    print("w2 codebook, test split:", summarize_codes(test_codes, k))

    # 3. The rest of the study through the stages.
    for metric in ("w2", "geodesic"):
        quantize.run(
            settings.model_copy(
                update={"quantize": settings.quantize.model_copy(update={"metric": metric})}
            )
        )
    train_vqvae.run(settings)
    for source in (f"quant/w2-k{k}", f"vqvae/vqvae-2x4-k{k}"):
        prior = settings.prior.model_copy(update={"source": source})
        train_prior.run(settings.model_copy(update={"prior": prior}))
    result = compare.run(settings)
    for pair in result.metrics["equal_rate_pairs"]:
        print(f"{pair['posthoc']} vs {pair['vqvae']}: MSE ratio {pair['mse_ratio']:.3f}")


if __name__ == "__main__":
    main()
