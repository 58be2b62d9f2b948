"""Apply winrate's compare changes on top of evalib's structure (run from the repo root)."""
import re, sys
def edit(path, old, new, count=1):
    s = open(path).read()
    if old not in s:
        sys.exit(f"PATCH FAILED in {path}: {old[:60]!r}")
    s = s.replace(old, new, count)
    open(path, "w").write(s)

# rates.py: prior-rate column, budgets, fsq / barycenter families, --rate
edit("geovq/evaluation/rates.py", '''            pairs.append(
                {
                    "posthoc": name,
                    "vqvae": other,
                    "bits_per_image": entry["bits_per_image"],''', '''            pairs.append(
                {
                    "posthoc": name,
                    "vqvae": other,
                    "bits_per_image": entry["bits_per_image"],
                    "posthoc_prior_bits": prior_bits_per_image(entry, split),
                    "vqvae_prior_bits": prior_bits_per_image(vq, split),
                    "posthoc_budget": entry.get("budget"),
                    "vqvae_budget": vq.get("budget"),''')
edit("geovq/evaluation/rates.py", '''    if entry["kind"] == "vqvae":
        return "vq-vae"''', '''    if entry["kind"] == "vqvae":
        return "fsq" if entry.get("metric") == "fsq" else "vq-vae"''')
edit("geovq/evaluation/rates.py", '''    return f"post-hoc {entry['metric']}{per_position} ({latent}){refit}"''', '''    metric = entry["metric"] + ("-bary" if entry.get("codeword") == "barycenter" else "")
    return f"post-hoc {metric}{per_position} ({latent}){refit}"


def prior_bits_per_image(entry: dict[str, Any], split: str) -> float | None:
    """The entropy-coded rate: the prior's NLL of the split's codes, bits per image (None
    without a prior). A fixed-length code spends bits_per_image = L log2 K instead."""
    prior = entry.get("prior") or {}
    return prior.get("splits", {}).get(split, {}).get("bits_per_image")''')
edit("geovq/evaluation/rates.py", '''def rate_points(entries: dict[str, dict], split: str) -> list[dict[str, Any]]:
    """{"name", "family", "bits_per_image", "mse"} of every source with reconstructions."""
    return [
        {
            "name": name,
            "family": family_of(entry),
            "bits_per_image": entry["bits_per_image"],
            "mse": entry["splits"][split]["mse_per_pixel"],
        }
        for name, entry in entries.items()
        if "mse_per_pixel" in entry["splits"].get(split, {})
    ]''', '''def rate_points(
    entries: dict[str, dict], split: str, rate: str = "nominal"
) -> list[dict[str, Any]]:
    """{"name", "family", "bits_per_image", "mse"} of every source with reconstructions.

    ``rate="nominal"``: L log2 K bits per image; ``"prior"``: the prior's NLL (Ballé et al.
    2018 compare learned codecs so), sources without a prior left out.
    """
    points = []
    for name, entry in entries.items():
        if "mse_per_pixel" not in entry["splits"].get(split, {}):
            continue
        bits = entry["bits_per_image"] if rate == "nominal" else prior_bits_per_image(entry, split)
        if bits is None:
            continue
        points.append(
            {
                "name": name,
                "family": family_of(entry),
                "bits_per_image": bits,
                "mse": entry["splits"][split]["mse_per_pixel"],
            }
        )
    return points''')

# settings: compare.rate
edit("geovq/settings.py", '''class CompareSettings(Section):
    split: str = "test"''', '''class CompareSettings(Section):
    split: str = "test"
    # x axis of the rate-distortion figure: L log2 K bits, or the prior's NLL bits per image
    rate: Literal["nominal", "prior"] = "nominal"''')

# compare stage: budget per entry, rate option
edit("geovq/stages/compare.py", '''        "rate_distortion": rate_points(entries, split) + sweep,''', '''        "rate": options.rate,
        "rate_distortion": rate_points(entries, split, options.rate)
        + (sweep if options.rate == "nominal" else []),''')
edit("geovq/stages/compare.py", '''        "codes_on_the_fly": split in source.on_the_fly,''', '''        "codes_on_the_fly": split in source.on_the_fly,
        "codeword": source.metadata.get("codeword", ""),
        "budget": training_budget(models.run_dir, source),''')
edit("geovq/stages/compare.py", '''def _prior_figures(''', '''def training_budget(run_dir: RunDir, source: Source) -> dict[str, float] | None:
    """Epochs and wall seconds spent training a source, from the manifest: VAE + extract +
    quantize + decoder refit for post hoc, the model's training for end to end."""
    short = source.name.split("/", 1)[1]
    if source.kind != "posthoc":
        record = run_dir.stage(f"train-vqvae/{short}")
        if not record:
            return None
        epochs = record["settings"].get("vqvae", {}).get("epochs")
        return {"epochs": epochs, "wall_seconds": record.get("wall_time_s", 0.0)}
    files = VaeFiles(source.metadata.get("vae") or None)
    keys = [files.train_key, files.extract_key, f"quantize/{short}"]
    refit = source.decoder.endswith("decoder.safetensors")
    if refit:
        keys.append(f"refit-decoder/{short}")
    records = [run_dir.stage(key) for key in keys]
    if not records[0] or not all(records):
        return None
    epochs = records[0]["settings"]["vae"]["epochs"]
    if refit:
        epochs += records[-1]["settings"]["refit"]["epochs"]
    wall = sum(record.get("wall_time_s", 0.0) for record in records)
    return {"epochs": epochs, "wall_seconds": wall}


def _prior_figures(''')
edit("geovq/stages/compare.py", '''        figures["rate_distortion"] = save_rate_distortion(
            metrics["rate_distortion"], run_dir.file(f"{folder}/rate_distortion.png")
        )''', '''        figures["rate_distortion"] = save_rate_distortion(
            metrics["rate_distortion"],
            run_dir.file(f"{folder}/rate_distortion.png"),
            rate=metrics["rate"],
        )''')

# plots: axis label per rate
edit("geovq/plots.py", '''def save_rate_distortion(points: list[dict], path: str | Path) -> Path:''', '''def save_rate_distortion(points: list[dict], path: str | Path, rate: str = "nominal") -> Path:''')
edit("geovq/plots.py", '''    ax.set_xlabel("bits per image")''', '''    ax.set_xlabel(
        "bits per image (L log2 K)" if rate == "nominal" else "bits per image (prior NLL)"
    )''')

# report: prior-rate and budget columns
edit("geovq/report.py", '''PAIR_HEADER = (
    "| post hoc | VQ-VAE | bits/image | MSE post hoc | MSE VQ-VAE | ratio | "
    "utilisation post hoc / VQ-VAE |"
)''', '''PAIR_HEADER = (
    "| post hoc | VQ-VAE | bits/image | prior bits/image post hoc / VQ-VAE | MSE post hoc | "
    "MSE VQ-VAE | ratio | utilisation post hoc / VQ-VAE | epochs post hoc / VQ-VAE | "
    "train s post hoc / VQ-VAE |"
)''')
edit("geovq/report.py", '''        lines += [PAIR_HEADER, "|---|---|---|---|---|---|---|"]
        lines += [
            f"| {p['posthoc']} | {p['vqvae']} | {p['bits_per_image']:.0f} | "
            f"{p['posthoc_mse']:.5f} | {p['vqvae_mse']:.5f} | {p['mse_ratio']:.3f} | "
            f"{p['posthoc_utilisation']:.0%} / {p['vqvae_utilisation']:.0%} |"
            for p in pairs
        ]''', '''        lines += [PAIR_HEADER, "|---" * 10 + "|"]
        lines += [_pair_row(p) for p in pairs]''')
edit("geovq/report.py", '''def _f(value: float | None, digits: int) -> str:''', '''def _pair_row(p: dict[str, Any]) -> str:
    ours, theirs = p.get("posthoc_budget") or {}, p.get("vqvae_budget") or {}
    return (
        f"| {p['posthoc']} | {p['vqvae']} | {p['bits_per_image']:.0f} | "
        f"{_f(p.get('posthoc_prior_bits'), 1)} / {_f(p.get('vqvae_prior_bits'), 1)} | "
        f"{p['posthoc_mse']:.5f} | {p['vqvae_mse']:.5f} | {p['mse_ratio']:.3f} | "
        f"{p['posthoc_utilisation']:.0%} / {p['vqvae_utilisation']:.0%} | "
        f"{ours.get('epochs', '-')} / {theirs.get('epochs', '-')} | "
        f"{_f(ours.get('wall_seconds'), 0)} / {_f(theirs.get('wall_seconds'), 0)} |"
    )


def _f(value: float | None, digits: int) -> str:''')
print("patched")
