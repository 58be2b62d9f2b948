import pytest
import torch
from torch import nn

from geovq import GeovqError, Interrupted
from geovq.rundir import RunDir
from geovq.training import TrainConfig, train


def _problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    y = x.sum(1, keepdim=True)

    def step(batch, generator):
        noise = 0.01 * torch.randn(batch[0].shape, generator=generator)
        loss = ((model(batch[0] + noise) - batch[1]) ** 2).mean()
        return loss, {"loss": loss}

    return model, [x, y], step


def _run(tmp_path, epochs, resume=False, model_and_data=None, on_epoch_end=None):
    model, data, step = model_and_data or _problem()
    result = train(
        model,
        data,
        step,
        lambda: {},
        TrainConfig(epochs=epochs, batch_size=16, lr=1e-2, seed=3, resume=resume),
        RunDir(tmp_path),
        "checkpoints/t.safetensors",
        on_epoch_end=on_epoch_end,
    )
    return model, result


def test_resume_gives_the_same_weights_as_one_run(tmp_path):
    straight, _ = _run(tmp_path / "a", epochs=4)
    _run(tmp_path / "b", epochs=2)
    # A fresh process would rebuild the model from scratch: different init, then resume.
    resumed, result = _run(tmp_path / "b", epochs=4, resume=True, model_and_data=_problem(seed=9))
    assert result.resumed_from == 2
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_ctrl_c_keeps_the_last_complete_epoch(tmp_path):
    def interrupt(epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="epoch 1 is kept"):
        _run(tmp_path, epochs=3, on_epoch_end=interrupt)
    _, result = _run(tmp_path, epochs=3, resume=True)
    assert result.resumed_from == 1


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(GeovqError, match="no checkpoint"):
        _run(tmp_path, epochs=1, resume=True)


def test_loss_decreases(tmp_path):
    _, result = _run(tmp_path, epochs=20)
    assert result.history[-1]["train_loss"] < 0.5 * result.history[0]["train_loss"]


def test_ctrl_c_in_the_first_epoch_does_not_offer_resume(tmp_path):
    def interrupt(epoch):
        raise KeyboardInterrupt  # before the first epoch's checkpoint is written

    with pytest.raises(Interrupted, match="nothing was kept") as caught:
        _run(tmp_path, epochs=3, on_epoch_end=interrupt)
    assert "--resume to continue" not in str(caught.value)
    assert not (tmp_path / "checkpoints").exists()


def test_a_non_finite_loss_stops_at_once_and_writes_nothing(tmp_path):
    model, data, _ = _problem()

    def step(batch, generator):
        loss = ((model(batch[0]) - batch[1]) ** 2).mean()
        return loss * float("inf"), {"loss": loss}

    with pytest.raises(GeovqError, match=r"epoch 1, step 1; nothing was written\. Lower --lr"):
        _run(tmp_path, epochs=2, model_and_data=(model, data, step))
    assert not tmp_path.exists() or not any(tmp_path.rglob("*.safetensors"))


def test_nan_training_through_the_cli_is_one_line_and_writes_nothing(tiny_run):
    from tests.helpers import cli, tree_digest

    before = tree_digest(tiny_run)
    args = ("--limit", "16", "--batch-size", "4", "--epochs", "1", "--lr", "1e10", "--vae", "nan")
    result = cli("train-vae", "--run-dir", tiny_run, "--device", "cpu", "-q", *args)
    assert result.exit_code == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "train-vae --vae nan" in result.stderr and "--lr" in result.stderr
    assert tree_digest(tiny_run) == before
