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
