"""Settings: the cold-start knobs reach the model, and bad values name the setting."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from freshrec_common.settings import SettingsError, load_settings
from online_models.config import ModelConfig


def test_cold_start_settings_reach_the_model() -> None:
    settings = load_settings(env={}, overrides=[
        "model.cold_events=5", "model.n_clusters=4", "model.cluster_weight=1.5"])
    config = settings.model
    assert isinstance(config, ModelConfig)
    assert (config.cold_events, config.n_clusters, config.cluster_weight) == (5, 4, 1.5)
    assert settings.sources["model.n_clusters"] == "--set model.n_clusters"


@pytest.mark.parametrize("override", [
    "model.cluster_weight=nan", "model.cluster_weight=inf", "model.cluster_weight=-1",
    "model.cold_events=-1", "model.n_clusters=0"])
def test_bad_cold_start_values_are_refused_by_name(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(SettingsError, match=key.replace(".", r"\.")):
        load_settings(env={}, overrides=[override])


@pytest.mark.parametrize(("override", "message"), [
    ("model.dim=0", r"model\.dim: must be >= 1, got 0 \(from --set model\.dim\)"),
    ("model.exclude=all", r"model\.exclude: must be one of 'purchased', 'seen', 'none', got 'all'"),
    ("model.weight_unfavorite=2", r"model\.weight_unfavorite: negative feedback needs"),
    ("model.context_len=x", r"model\.context_len: expected an integer, got 'x'"),
])
def test_model_settings_are_checked_by_the_model_config(override: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(env={}, overrides=[override])


def test_every_model_config_field_is_a_setting_with_its_default_documented() -> None:
    """The [model] section of default_settings.toml documents ModelConfig's defaults as
    commented lines (ModelConfig holds them): each field once, with its real default."""
    text = (Path(__file__).parents[3] / "freshrec_common" / "default_settings.toml").read_text()
    section = text.split("[model]\n", 1)[1].split("\n[", 1)[0]
    documented = {}
    for line in section.splitlines():
        m = re.fullmatch(r"# (\w+) = (.+)", line)
        if m:
            documented[m.group(1)] = tomllib.loads(f"v = {m.group(2)}")["v"]
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    assert documented == defaults
    assert load_settings(env={}).model == ModelConfig()
    env = {"FRESHREC_MODEL_POP_WEIGHT": "0.7"}
    assert load_settings(env=env).model.pop_weight == 0.7


def test_restart_settings_are_checked() -> None:
    job = load_settings(overrides=["job.restart_attempts=0", "job.restart_delay_ms=0"]).job
    assert (job.restart_attempts, job.restart_delay_ms) == (0, 0)
    with pytest.raises(SettingsError, match=r"job\.restart_attempts: must be >= 0, got -1"):
        load_settings(overrides=["job.restart_attempts=-1"])


def test_the_dedup_window_fits_the_stored_ages() -> None:
    assert load_settings(overrides=["job.dedup_window_s=65535"]).job.dedup_window_s == 65535
    with pytest.raises(SettingsError, match=r"job\.dedup_window_s: at most 65535 s .*got 86400"):
        load_settings(overrides=["job.dedup_window_s=86400"])
