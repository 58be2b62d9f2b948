import pytest

from geovq.evaluation.budget import training_budget


def _record(section: str | None, epochs: int, seconds: float) -> dict:
    settings = {section: {"epochs": epochs, "lr": 1e-3}} if section else {"quantize": {"k": 16}}
    return {"settings": settings, "wall_time_s": seconds}


def test_posthoc_budget_adds_the_vae_and_refit_epochs_and_every_stage_s_seconds():
    records = {
        "train-vae/spatial": _record("vae", 20, 100.0),
        "extract/spatial": _record(None, 0, 2.5),
        "quantize/w2-k256": _record(None, 0, 40.0),
        "refit-decoder/w2-k256": _record("refit", 5, 30.0),
    }
    budget = training_budget(records)
    assert budget["epochs"] == 25
    assert budget["wall_seconds"] == pytest.approx(172.5)
    assert budget["stages"] == list(records)


def test_end_to_end_budget_is_its_own_training():
    budget = training_budget({"train-vqvae/fsq-7x7": _record("vqvae", 25, 90.0)})
    assert (budget["epochs"], budget["wall_seconds"]) == (25, 90.0)


def test_a_missing_record_gives_no_budget():
    assert training_budget({"train-vae": _record("vae", 20, 1.0), "extract": None}) is None
    assert training_budget({}) is None
