"""The Flink configuration the job's settings produce (a plain Configuration: no JVM)."""

from __future__ import annotations

import pytest

from flink_jobs.environment import flink_configuration
from freshrec_common.settings import SettingsError, load_settings


@pytest.mark.parametrize(
    ("override", "expected"), [([], "10 ms"), (["job.network_buffer_timeout_ms=0"], "0 ms")]
)
def test_network_buffer_timeout_reaches_flink(override: list[str], expected: str) -> None:
    conf = flink_configuration(load_settings(overrides=override))
    assert conf.get_string("execution.buffer-timeout.interval", "") == expected


def test_a_negative_network_buffer_timeout_is_refused_by_name() -> None:
    with pytest.raises(SettingsError, match=r"job\.network_buffer_timeout_ms: must be >= 0"):
        load_settings(overrides=["job.network_buffer_timeout_ms=-1"])
