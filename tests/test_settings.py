import pytest

from geovq import GeovqError
from geovq.settings import Settings, load_settings, parse_grid


def test_defaults():
    settings = load_settings()
    assert settings.data.dataset == "mnist5k"
    assert settings.vae.epochs == Settings().vae.epochs == 20


def test_toml_overrides_defaults(tmp_path):
    (tmp_path / "geovq.toml").write_text("[vae]\nepochs = 7\n")
    settings = load_settings({"run_dir": tmp_path})
    assert settings.vae.epochs == 7
    assert settings.vae.batch_size == 128


def test_env_overrides_toml(tmp_path, monkeypatch):
    (tmp_path / "geovq.toml").write_text("[vae]\nepochs = 7\nbatch_size = 16\n")
    monkeypatch.setenv("GEOVQ_VAE__EPOCHS", "5")
    settings = load_settings({"run_dir": tmp_path})
    assert settings.vae.epochs == 5
    assert settings.vae.batch_size == 16  # the TOML value below survives the merge


def test_flags_override_env(tmp_path, monkeypatch):
    (tmp_path / "geovq.toml").write_text("[vae]\nepochs = 7\n")
    monkeypatch.setenv("GEOVQ_VAE__EPOCHS", "5")
    monkeypatch.setenv("GEOVQ_VAE__LR", "0.01")
    settings = load_settings({"run_dir": tmp_path, "vae": {"epochs": 3}})
    assert settings.vae.epochs == 3
    assert settings.vae.lr == 0.01


def test_explicit_config_path(tmp_path):
    config = tmp_path / "other.toml"
    config.write_text("seed = 11\n[quantize]\nk = 64\n")
    settings = load_settings({"run_dir": tmp_path / "run"}, config=config)
    assert (settings.seed, settings.quantize.k) == (11, 64)


def test_run_dir_from_env_finds_its_config(tmp_path, monkeypatch):
    (tmp_path / "geovq.toml").write_text("[vae]\nepochs = 9\n")
    monkeypatch.setenv("GEOVQ_RUN_DIR", str(tmp_path))
    assert load_settings().vae.epochs == 9


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[vae]\nepochz = 3\n", "vae.epochz"),
        ("[vae]\nepochs = 'many'\n", "--epochs"),
        ("[vae\n", "not valid TOML"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, toml, needle):
    (tmp_path / "geovq.toml").write_text(toml)
    with pytest.raises(GeovqError) as error:
        load_settings({"run_dir": tmp_path})
    assert needle in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"vae": {"epochs": 0}}, "--epochs"),
        ({"vae": {"lr": -1.0}}, "--lr"),
        ({"vae": {"batch_size": 0}}, "--batch-size"),
        ({"quantize": {"k": 0}}, "--k"),
        ({"quantize": {"grid": "2by4"}}, "2by4"),
        ({"sample": {"temperature": 0}}, "--temperature"),
    ],
)
def test_validation_lives_in_the_model(overrides, needle):
    with pytest.raises(GeovqError) as error:
        load_settings(overrides)
    assert needle in str(error.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(GeovqError, match="does not exist"):
        load_settings(config=tmp_path / "nope.toml")


def test_parse_grid():
    assert parse_grid("7x7") == (7, 7)
    with pytest.raises(GeovqError):
        parse_grid("0x4")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"quantize = 5\n", "not a table"),  # was silently ignored
        (b"\xff\xfe[vae]\n", "UTF-8"),
    ],
)
def test_config_shapes_and_encoding_are_checked(tmp_path, content, needle):
    (tmp_path / "geovq.toml").write_bytes(content)
    with pytest.raises(GeovqError, match=needle):
        load_settings({"run_dir": tmp_path})


@pytest.mark.parametrize(
    ("name", "value"),
    [("GEOVQ_STUDY__METRICS", "w2"), ("GEOVQ_QUANTIZE", "{bad json")],
)
def test_malformed_environment_is_one_clear_error(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(GeovqError, match="GEOVQ_") as error:
        load_settings()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("seed", [-1, 2**63, 99999999999999999999999])
def test_seed_outside_64_bits_is_refused(seed):
    with pytest.raises(GeovqError, match="--seed"):
        load_settings({"seed": seed})
    assert load_settings({"seed": 2**63 - 1}).seed == 2**63 - 1
