"""What a source cost to train: the epochs and wall seconds of the stages that made it, summed
from their manifest records.

A post-hoc source is a VAE, its latents, a codebook and (if it decodes through one) a refit
decoder; a VQ-VAE or FSQ model trains once. ``geovq run`` gives both families the same epochs
(VQ-VAE epochs = VAE epochs + refit epochs); compare shows each budget beside the MSE.
"""

from __future__ import annotations

from typing import Any

# stage family -> the settings section whose "epochs" it trained for; other stages (extract,
# quantize) add wall time but no epochs
EPOCHS_SECTION = {"train-vae": "vae", "refit-decoder": "refit", "train-vqvae": "vqvae"}


def training_budget(records: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:
    """{"epochs", "wall_seconds", "stages"} of stage records (key -> record with "settings"
    and "wall_time_s"): epochs of the training stages, wall seconds of every stage. None
    where a record is missing (the budget would be short)."""
    if not records or any(record is None for record in records.values()):
        return None
    epochs = 0
    for key, record in records.items():
        section = EPOCHS_SECTION.get(key.split("/", 1)[0])
        if section is not None:
            epochs += int(record["settings"][section]["epochs"])
    wall_seconds = sum(float(record.get("wall_time_s", 0.0)) for record in records.values())
    return {"epochs": epochs, "wall_seconds": wall_seconds, "stages": list(records)}
