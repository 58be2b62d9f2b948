"""compare's report as text: the headline table (terminal and Markdown) and ``report.md``.

Takes compare's metrics dictionary (what ``report/<split>/metrics.json`` holds) and nothing
else, so a report can be re-rendered from its JSON.
"""

from __future__ import annotations

from typing import Any

from geovq.evaluation.rates import prior_bits_per_image

HEADLINE_COLUMNS = [
    "quantization",
    "bits/img",
    "prior bits/img",
    "mse/pixel",
    "epochs",
    "wall s",
    "psnr",
    "ssim",
    "util",
    "dead",
    "perplexity",
    "prior bits/code",
    "unigram",
    "FD prior",
    "FD random",
]
FD_NOTE = (
    "FD: Fréchet distance between classifier features of {n} samples and of the real test "
    "images (lower is better); '-' where there is no prior."
)
PAIR_COLUMNS = [
    "post hoc",
    "VQ-VAE",
    "bits/image",
    "prior bits/image post hoc / VQ-VAE",
    "MSE post hoc",
    "MSE VQ-VAE",
    "ratio",
    "utilisation post hoc / VQ-VAE",
    "epochs post hoc / VQ-VAE",
    "wall s post hoc / VQ-VAE",
]
RATE_NOTE = (
    "bits/img: the nominal rate, L log2 K bits of a fixed-length code. prior bits/img: the "
    "entropy-coded rate, the prior's NLL of the split's codes summed over the L positions "
    "(Ballé et al. 2018); '-' without a prior. Equal-rate pairs match on nominal bits."
)
BUDGET_NOTE = (
    "epochs, wall s: what made the source, from the manifest. Post hoc: its VAE's epochs plus "
    "its refit's; wall time of train-vae, extract, quantize and refit-decoder (a VAE decoder "
    "row: no refit). VQ-VAE and FSQ: their own training. The prior is not counted (both "
    "families train one alike). A resumed stage records only its last session's time."
)
NO_PAIR_NOTE = (
    "No post-hoc quantization has a VQ-VAE at the same bits per image in this run; compare "
    "rows at different rates only with their bits/img column in view."
)
ON_THE_FLY_NOTE = (
    "Codes marked * were assigned on the fly for this split (it was added after the "
    "quantization was fitted), with the quantization's own rule; nothing was retrained."
)


def smoke_warning(reason: str) -> str:
    return (
        f"SMOKE RUN ({reason}): a check that the pipeline runs end to end. Its figures mean "
        "nothing; use the default preset (or more data and epochs) for results."
    )


def headline_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """One row per continuous VAE (reference) and per source, cells as text."""
    split = metrics["split"]
    quality = metrics["sample_quality"].get("sources", {})
    rows = []
    for name, ref in metrics["vae_reference"].items():
        figures = ref["splits"].get(split, {})
        fd = quality.get(name, {}).get("prior_frechet")
        budget = ref.get("budget") or {}
        rows.append(
            [
                f"{name} (continuous)",
                "-",
                "-",
                _f(figures.get("mse_per_pixel"), 5),
                _budget_cell(budget, "epochs"),
                _budget_cell(budget, "wall_seconds"),
                _f(figures.get("psnr"), 2),
                _f(figures.get("ssim"), 3),
                *["-"] * 5,
                _f(fd, 1),
                "-",
            ]
        )
    for name, entry in metrics["sources"].items():
        figures = entry["splits"][split]
        prior = entry.get("prior") or {}
        prior_bits = prior.get("splits", {}).get(split, {}).get("bits_per_code")
        sq = quality.get(name, {})
        budget = entry.get("budget") or {}
        rows.append(
            [
                name + (" *" if entry.get("codes_on_the_fly") else ""),
                f"{entry['bits_per_image']:.0f}",
                _f(prior_bits_per_image(entry, split), 1),
                _f(figures.get("mse_per_pixel"), 5),
                _budget_cell(budget, "epochs"),
                _budget_cell(budget, "wall_seconds"),
                _f(figures.get("psnr"), 2),
                _f(figures.get("ssim"), 3),
                f"{figures['utilisation']:.0%}",
                str(figures["dead_codes"]),
                _f(figures["perplexity"], 1),
                _f(prior_bits, 3),
                _f(prior.get("unigram_bits_per_code"), 3),
                _f(sq.get("prior_frechet"), 1),
                _f(sq.get("random_frechet"), 1),
            ]
        )
    return rows


def render_report(metrics: dict[str, Any]) -> str:
    """The report as Markdown: readable on its own, figures linked beside it."""
    split = metrics["split"]
    lines = [f"# geovq compare — {split} split", ""]
    if metrics.get("smoke_run"):
        lines += [f"> **{smoke_warning(metrics['smoke_run'])}**", ""]
    lines += ["| " + " | ".join(HEADLINE_COLUMNS) + " |", "|" + "---|" * len(HEADLINE_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in headline_rows(metrics)]
    lines += ["", RATE_NOTE, "", BUDGET_NOTE]
    if any(entry.get("codes_on_the_fly") for entry in metrics["sources"].values()):
        lines += ["", ON_THE_FLY_NOTE]
    quality = metrics["sample_quality"]
    if "skipped" in quality:
        lines += ["", f"Sample quality: {quality['skipped']}."]
    else:
        lines += ["", FD_NOTE.format(n=quality.get("samples", "-"))]
    if "classifier_test_accuracy" in quality:
        lines.append(
            f"Classifier test accuracy: {quality['classifier_test_accuracy']:.1%}; "
            f"FD of as many real train images (the floor): {quality['real_train_frechet']:.2f}."
        )
        for name, figures in quality["sources"].items():
            if "class_agreement" in figures:
                share = figures["class_agreement"]
                lines.append(f"- {name}: conditional samples classified as asked: {share:.1%}")
    lines += ["", "## Equal bit rate", ""]
    pairs = metrics["equal_rate_pairs"]
    if pairs:
        lines += ["| " + " | ".join(PAIR_COLUMNS) + " |", "|" + "---|" * len(PAIR_COLUMNS)]
        lines += ["| " + " | ".join(_pair_cells(p)) + " |" for p in pairs]
    else:
        lines.append(NO_PAIR_NOTE)
    lines += ["", "## Figures", ""]
    drawn = metrics.get("rate_distortion", {})
    if "prior" in drawn and metrics.get("prior_rate_left_out"):
        lines += [prior_rate_note(metrics["prior_rate_left_out"], bool(drawn["prior"])), ""]
    for label, path in sorted(metrics.get("figures", {}).items()):
        lines.append(f"![{label}]({path.rsplit('/', 1)[-1]})")
    return "\n".join(lines) + "\n"


def prior_rate_note(names: list[str], drawn: bool = True) -> str:
    """Which sources the prior-rate figure leaves out: those without a prior."""
    if not drawn:
        return "No source has a prior on this split, so there is no prior-rate figure."
    return (
        "Left out of the prior-rate figure (rate_distortion_prior.png), having no prior: "
        + ", ".join(names)
        + "."
    )


def _pair_cells(p: dict[str, Any]) -> list[str]:
    ours, theirs = p.get("posthoc_budget") or {}, p.get("vqvae_budget") or {}
    return [
        p["posthoc"],
        p["vqvae"],
        f"{p['bits_per_image']:.0f}",
        f"{_f(p.get('posthoc_prior_bits_per_image'), 1)} / "
        f"{_f(p.get('vqvae_prior_bits_per_image'), 1)}",
        f"{p['posthoc_mse']:.5f}",
        f"{p['vqvae_mse']:.5f}",
        f"{p['mse_ratio']:.3f}",
        f"{p['posthoc_utilisation']:.0%} / {p['vqvae_utilisation']:.0%}",
        f"{_budget_cell(ours, 'epochs')} / {_budget_cell(theirs, 'epochs')}",
        f"{_budget_cell(ours, 'wall_seconds')} / {_budget_cell(theirs, 'wall_seconds')}",
    ]


def _budget_cell(budget: dict[str, Any], key: str) -> str:
    value = budget.get(key)
    if value is None:
        return "-"
    return str(value) if key == "epochs" else f"{value:.1f}"


def _f(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
