"""The job's shard keys spread shards evenly over subtasks, by Flink's own key-group rule."""

from __future__ import annotations

import pytest

from flink_jobs.shard_keys import MAX_PARALLELISM, key_group, shard_keys, subtask
from freshrec_common.settings import SettingsError, load_settings

pytestmark = pytest.mark.unit


def test_key_groups_are_flinks() -> None:
    # KeyGroupRangeAssignment.assignToKeyGroup(Integer k, 128) of flink-dist 2.2.1.
    assert [key_group(k) for k in range(8)] == [94, 86, 127, 113, 7, 126, 18, 113]
    # ...and assignKeyToParallelOperator for the keys below.
    assert [subtask(k, 2) for k in (312, 75, 84, 57)] == [0, 0, 1, 1]
    assert [subtask(k, 4) for k in (312, 361, 75, 300, 84, 70, 57, 163)] == [
        0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 6, 8, 12, 16, 64, 128])
def test_every_subtask_gets_its_share_of_shards(shards: int) -> None:
    keys = shard_keys(shards)
    assert len(set(keys)) == shards
    for p in range(1, shards + 1):
        per_subtask = [0] * p
        for k in keys:
            per_subtask[subtask(k, p)] += 1
        # Each subtask holds floor or ceil of shards / p (exactly shards / p when p divides).
        assert max(per_subtask) - min(per_subtask) <= 1, (shards, p, per_subtask)


def test_plain_shard_numbers_would_bunch_up() -> None:
    assert {subtask(s, 2) for s in range(4)} == {1}


def test_more_shards_than_the_max_parallelism_are_refused() -> None:
    with pytest.raises(SettingsError, match=rf"job\.user_shards: at most {MAX_PARALLELISM}"):
        load_settings(env={}, overrides=[f"job.user_shards={MAX_PARALLELISM + 1}"])
    with pytest.raises(ValueError, match=r"shards must be in 1\.\.128"):
        shard_keys(0)
