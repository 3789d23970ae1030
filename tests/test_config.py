"""Config: TOML, then REINF_<SECTION>_<KEY>, then flags; unknown keys and wrong types stop start-up."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from reinf.config import Config, ConfigError, load_config
from reinf.paths import private_dir, write_private


def test_precedence_toml_then_environment_then_flags(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[model]\nname = "from-toml"\n[training]\nmin_new_ratings = 5\n')
    cfg = load_config(tmp_path, environ={})
    assert cfg.model.name == "from-toml" and cfg.training.min_new_ratings == 5
    cfg = load_config(tmp_path, environ={"REINF_TRAINING_MIN_NEW_RATINGS": "7"})
    assert cfg.model.name == "from-toml" and cfg.training.min_new_ratings == 7
    cfg = load_config(tmp_path, {"model": {"name": "from-flag"}}, environ={"REINF_MODEL_NAME": "from-env"})
    assert cfg.model.name == "from-flag"
    cfg = load_config(tmp_path, environ={"REINF_REWARD_MODEL_NAME": "some/ranker"})
    assert cfg.reward_model.name == "some/ranker"


@pytest.mark.parametrize(
    ("toml", "env", "needle"),
    [
        ('[model]\nnmae = "x"\n', {}, "model.nmae"),
        ("[modle]\n", {}, "[modle]"),
        ('[training]\nmin_new_ratings = "many"\n', {}, "training.min_new_ratings"),
        ("[server]\nredact_secrets = 3\n", {}, "server.redact_secrets"),
        ("", {"REINF_TRAINING_LEARNING_RATE": "fast"}, "training.learning_rate"),
        ("", {"REINF_NOSUCH_KEY": "1"}, "REINF_NOSUCH_KEY"),
        ('[server]\nhost = "0.0.0.0"\n', {}, "not a loopback"),
        ("[model\n", {}, "not valid TOML"),
        ("[training]\nlearning_rate = -0.001\n", {}, "training.learning_rate"),
        ("[training]\nppo_epochs = 0\n", {}, "training.ppo_epochs"),
        ("", {"REINF_TRAINING_TEMPERATURE": "nan"}, "training.temperature"),
        ("", {"REINF_REWARD_MODEL_HOLDOUT_FRACTION": "inf"}, "reward_model.holdout_fraction"),
        ('[training]\nstart_from = "base"\n', {}, "training.start_from"),
        ("", {"REINF_TRAINING_PTX_COEF": "-1"}, "training.ptx_coef"),
        ("[training]\nimitation_epochs = 3\n", {}, "is now training.warm_start_epochs"),
        ("", {"REINF_MODEL_SEED": "-2"}, "model.seed"),
        ("", {"REINF_TRAINING_KTO_BETA": "0"}, "training.kto_beta"),
        ("[training]\ncompletion_replay = -1\n", {}, "training.completion_replay"),
        ("", {"REINF_TRAINING_COMPLETION_REPLAY": "all"}, "training.completion_replay"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, toml: str, env: dict[str, str], needle: str) -> None:
    (tmp_path / "config.toml").write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, environ=env)
    assert needle in str(err.value)


def test_non_loopback_needs_the_explicit_flag(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, {"server": {"host": "0.0.0.0", "allow_remote": True}}, environ={})
    assert cfg.server.host == "0.0.0.0"


def test_round_trip_for_the_trainer(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, {"training": {"ppo_epochs": 2}}, environ={})
    again = Config.from_dict(cfg.to_dict())
    assert again.training.ppo_epochs == 2 and again.home == cfg.home


def test_private_files_and_folders(tmp_path: Path) -> None:
    d = private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    write_private(d / "f.json", "{}")
    assert stat.S_IMODE((d / "f.json").stat().st_mode) == 0o600
