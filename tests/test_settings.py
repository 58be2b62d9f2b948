import pytest

from geovq import GeovqError
from geovq.settings import Settings, load_settings, parse_grid, source_of


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
        ("[vae]\nepochz = 3\n", "did you mean vae.epochs?"),
        ("[vae]\nepochs = 'many'\n", "geovq.toml (key vae.epochs)"),
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
        ({"vae": {"epochs": 0}}, "vae.epochs"),
        ({"vae": {"lr": -1.0}}, "vae.lr"),
        ({"vae": {"batch_size": 0}}, "vae.batch_size"),
        ({"quantize": {"k": 0}}, "quantize.k"),
        ({"quantize": {"grid": "2by4"}}, "2by4"),
        ({"sample": {"temperature": 0}}, "sample.temperature"),
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
        load_settings({"seed": seed}, origins={"seed": "--seed"})
    assert load_settings({"seed": 2**63 - 1}).seed == 2**63 - 1


def test_an_error_names_the_environment_variable(tmp_path, monkeypatch):
    (tmp_path / "geovq.toml").write_text("[vae]\nbatch_size = 16\n")
    monkeypatch.setenv("GEOVQ_VAE__EPOCHS", "zero")
    with pytest.raises(GeovqError) as error:
        load_settings({"run_dir": tmp_path})
    assert "GEOVQ_VAE__EPOCHS" in str(error.value)
    assert "geovq.toml" not in str(error.value)


def test_an_unknown_environment_variable_suggests_the_close_one(monkeypatch):
    monkeypatch.setenv("GEOVQ_VAE__EPOCH", "3")
    with pytest.raises(GeovqError, match="GEOVQ_VAE__EPOCH; did you mean GEOVQ_VAE__EPOCHS"):
        load_settings()


def test_an_error_names_the_flag_and_the_assignment():
    with pytest.raises(GeovqError, match="from --metric"):
        load_settings({"quantize": {"metric": "cosine"}}, origins={"quantize.metric": "--metric"})
    with pytest.raises(GeovqError, match=r"from --set quantize\.k=0"):
        load_settings(assignments=["quantize.k=0"])
    with pytest.raises(GeovqError, match="did you mean quantize.k"):
        load_settings(assignments=["quantize.kk=3"])


def test_assignments_rank_with_the_flags_above_env_and_toml(tmp_path, monkeypatch):
    (tmp_path / "geovq.toml").write_text("[vae]\nepochs = 7\n[quantize]\nk = 9\n")
    monkeypatch.setenv("GEOVQ_VAE__EPOCHS", "5")
    settings = load_settings(
        {"run_dir": tmp_path, "quantize": {"k": 3}},
        assignments=["vae.epochs=2", "study.metrics=w2,geodesic"],
    )
    assert (settings.vae.epochs, settings.quantize.k) == (2, 3)
    assert settings.study.metrics == ["w2", "geodesic"]
    assert source_of(settings, "vae.epochs") == "--set vae.epochs=2"
    assert source_of(settings, "vae.lr") == "default"


def test_sources_name_each_layer(tmp_path, monkeypatch):
    (tmp_path / "geovq.toml").write_text("[vae]\nepochs = 7\n")
    monkeypatch.setenv("GEOVQ_QUANTIZE__K", "64")
    settings = load_settings(
        {"run_dir": tmp_path},
        origins={"run_dir": "--run-dir"},
        preset={"prior": {"epochs": 2}},
        preset_name="quick",
    )
    assert (
        source_of(settings, "vae.epochs")
        == f"config file {tmp_path / 'geovq.toml'} (key vae.epochs)"
    )
    assert source_of(settings, "quantize.k") == "environment variable GEOVQ_QUANTIZE__K"
    assert source_of(settings, "prior.epochs") == "preset quick"
    assert source_of(settings, "run_dir") == "--run-dir"
