"""Settings: the cold-start knobs reach the model, and bad values name the setting."""

from __future__ import annotations

import dataclasses

import pytest

from freshrec.settings import SettingsError, load_settings
from online_models.config import ModelConfig


def test_cold_start_settings_reach_the_model() -> None:
    settings = load_settings(env={}, overrides=[
        "model.cold_events=5", "model.n_clusters=4", "model.cluster_weight=1.5"])
    config = ModelConfig.from_mapping(dataclasses.asdict(settings.model))
    assert (config.cold_events, config.n_clusters, config.cluster_weight) == (5, 4, 1.5)


@pytest.mark.parametrize("override", [
    "model.cluster_weight=nan", "model.cluster_weight=inf", "model.cluster_weight=-1",
    "model.cold_events=-1", "model.n_clusters=0"])
def test_bad_cold_start_values_are_refused_by_name(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(SettingsError, match=key.replace(".", r"\.")):
        load_settings(env={}, overrides=[override])
