"""geovq config show / init through the real CLI."""

from __future__ import annotations

import json
import re
import tomllib

from geovq.settings import load_settings
from geovq.stages.config import template
from tests.helpers import cli


def test_show_lists_each_value_with_its_source(tmp_path, monkeypatch):
    (tmp_path / "geovq.toml").write_text("[vae]\nepochs = 7\nbatch_size = 16\n")
    monkeypatch.setenv("GEOVQ_VAE__LR", "0.01")
    result = cli(
        "config", "show", "--run-dir", tmp_path, "--seed", "4", "--set", "vae.epochs=3", "--json"
    )
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)["metrics"]["settings"]
    assert shown["vae.epochs"] == {"value": 3, "source": "--set vae.epochs=3"}
    assert shown["vae.batch_size"]["source"].endswith("geovq.toml (key vae.batch_size)")
    assert shown["vae.lr"] == {"value": 0.01, "source": "environment variable GEOVQ_VAE__LR"}
    assert shown["seed"] == {"value": 4, "source": "--seed"}
    assert shown["prior.epochs"] == {"value": 15, "source": "default"}


def test_set_is_applied_after_the_flags():
    result = cli("config", "show", "--seed", "4", "--set", "seed=5", "--json")
    assert json.loads(result.stdout)["metrics"]["settings"]["seed"]["value"] == 5


def test_show_with_a_preset(tmp_path):
    result = cli("config", "show", "--run-dir", tmp_path, "--preset", "quick", "--json")
    shown = json.loads(result.stdout)["metrics"]["settings"]
    assert shown["vae.epochs"] == {"value": 1, "source": "preset quick"}


def test_bad_set_is_one_line_naming_it(tmp_path):
    result = cli("train-vae", "--run-dir", tmp_path / "run", "--set", "vae.epochs=0")
    assert result.exit_code == 2
    assert "--set vae.epochs=0" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_init_writes_a_template_and_keeps_an_existing_file(tmp_path):
    run = tmp_path / "run"
    assert cli("config", "init", "--run-dir", run).exit_code == 0
    written = (run / "geovq.toml").read_text()
    assert written == template()
    (run / "geovq.toml").write_text("seed = 3\n")
    refused = cli("config", "init", "--run-dir", run)
    assert refused.exit_code == 2 and "--force" in refused.stderr
    assert (run / "geovq.toml").read_text() == "seed = 3\n"
    assert cli("config", "init", "--run-dir", run, "--force").exit_code == 0
    assert (run / "geovq.toml").read_text() == written


def test_template_restates_every_default(tmp_path):
    text = template()
    # Uncomment every "# key = value" line: the file must parse and change nothing.
    uncommented = re.sub(r"^# (\w+ = .+)$", r"\1", text, flags=re.MULTILINE)
    tomllib.loads(uncommented)
    (tmp_path / "geovq.toml").write_text(uncommented)
    settings = load_settings({"run_dir": tmp_path})
    defaults = load_settings({"run_dir": tmp_path / "none"})
    assert settings.model_dump(exclude={"run_dir"}) == defaults.model_dump(exclude={"run_dir"})
    set_in_file = {line.split(" = ")[0] for line in uncommented.splitlines() if " = " in line}
    assert {"epochs", "metric", "k", "sweep_k"} - set_in_file == {"sweep_k"}  # None: unset
