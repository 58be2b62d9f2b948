"""``geovq train-prior``: a gated PixelCNN over a source's code grids.

Reports test negative log-likelihood in bits per code beside two baselines on the same test
codes: uniform (log2 K) and unigram (train code frequencies; per position for per-position
codebooks).
"""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F

from geovq import GeovqError, memory
from geovq.artifacts import PriorFiles, PriorMeta, Quantization
from geovq.evaluation.prior_nll import code_baselines, split_bits_per_code
from geovq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig
from geovq.progress import NullProgress
from geovq.rundir import RunDir
from geovq.settings import Settings
from geovq.stages.record import StageResult, StageRun, fmt, stage
from geovq.stages.sources import Source, load_source, require_source
from geovq.training import TrainConfig, resolve_device, train
from geovq.training_log import TrainingLog


def stage_key(source_name: str) -> str:
    return PriorFiles(Quantization.parse(source_name)).key


@stage
def run(settings: Settings, progress: NullProgress | None = None) -> StageResult:
    progress = progress or NullProgress()
    run_dir = RunDir(settings.run_dir)
    device = resolve_device(settings.device)
    name = require_source(run_dir, settings.prior.source)
    files = PriorFiles(Quantization.parse(name))
    record = StageRun(run_dir, files.key, None, device, settings.seed, settings.force)
    record.settle(_recorded(settings), resume=settings.prior.resume)
    source = load_source(record, name, device)
    for split in ("train", "test"):
        if split not in source.codes:
            raise GeovqError(f"source {name} has no {split} codes; rerun the stage that wrote it")
    num_classes = _num_classes(source) if settings.prior.conditional else 0
    config = PixelCNNConfig(
        num_codes=source.k,
        height=source.grid[0],
        width=source.grid[1],
        hidden=settings.prior.hidden,
        layers=settings.prior.layers,
        num_classes=num_classes,
    )
    memory.require(
        memory.training_bytes(
            memory.pixelcnn_parameters(config.hidden, config.layers, config.num_codes),
            memory.pixelcnn_activations(
                config.hidden, config.layers, source.positions, config.num_codes
            ),
            settings.prior.batch_size,
        ),
        device,
        f"a prior with --hidden {config.hidden} and --layers {config.layers}",
        "use a smaller --hidden, --layers or --batch-size",
    )
    if not config.covers_past:
        progress.log(
            f"warning: {config.layers} layers do not see the whole past of a {source.grid} grid"
        )
    torch.manual_seed(settings.seed)
    model = GatedPixelCNN(config).to(device)
    train_codes, test_codes = source.codes["train"].to(device), source.codes["test"].to(device)
    train_labels = source.labels["train"].to(device) if num_classes else None
    test_labels = source.labels["test"].to(device) if num_classes else None
    data = [train_codes] + ([train_labels] if num_classes else [])

    def step(batch, generator):
        labels = batch[1] if num_classes else None
        nats = F.cross_entropy(model(batch[0], labels), batch[0])
        return nats, {"bits_per_code": nats / math.log(2)}

    def evaluate() -> dict[str, float]:
        return {"test_bits_per_code": split_bits_per_code(model, test_codes, test_labels)}

    prior = settings.prior
    result = train(
        model,
        data,
        step,
        evaluate,
        TrainConfig(prior.epochs, prior.batch_size, prior.lr, settings.seed, prior.resume),
        run_dir,
        files.checkpoint,
        progress=progress,
        label=f"train-prior {name}",
        log=TrainingLog(run_dir.path, stage_key(name), settings.log == "tensorboard"),
    )
    bits = split_bits_per_code(model, test_codes, test_labels)
    baselines = code_baselines(
        source.codes["train"], source.codes["test"], source.k, source.per_position
    )
    meta = PriorMeta(json.loads(config.to_json()), source.name, source.codes_sha256)
    record.write(files.path, model.state_dict(), meta.to_metadata())
    metrics = {
        "source": name,
        "bits_per_code": bits,
        "bits_per_image": bits * source.positions,
        **baselines,
        "conditional": bool(num_classes),
        "history": result.history,
        "codes_per_s": round(result.images_per_s * source.positions, 1),
    }
    record.finish(metrics)
    rows = [
        ["prior", fmt(bits), fmt(bits * source.positions)],
        [
            "unigram",
            fmt(baselines["unigram_bits_per_code"]),
            fmt(baselines["unigram_bits_per_code"] * source.positions),
        ],
        ["uniform", fmt(baselines["uniform_bits_per_code"]), fmt(source.bits_per_image)],
    ]
    return StageResult(
        files.key,
        metrics,
        record.outputs,
        title=f"train-prior {name}: test NLL",
        columns=["model", "bits per code", "bits per image"],
        rows=rows,
    )


def _num_classes(source: Source) -> int:
    labels = source.labels.get("train")
    if labels is None or labels.numel() == 0 or int(labels.min()) < 0:
        raise GeovqError(
            f"--conditional needs class labels but source {source.name} has none; "
            "drop --conditional"
        )
    return int(labels.max()) + 1


def _recorded(settings: Settings) -> dict:
    return {"prior": json.loads(settings.prior.model_dump_json()), "seed": settings.seed}
