"""Batch agents commit no further than a stateful handler says is durable."""

from __future__ import annotations

from streams.bus.batching import offsets_to_commit
from streams.tracing.model import PartitionReports


def test_without_safe_offsets_commits_past_the_last_handled_record() -> None:
    handled = [("t", 0, 5), ("t", 1, 7), ("t", 0, 6)]
    assert offsets_to_commit(handled) == {("t", 0): 7, ("t", 1): 8}


def test_safe_offsets_hold_commits_back_per_partition() -> None:
    handled = [("t", 0, 5), ("t", 1, 7), ("t", 0, 6)]
    assert offsets_to_commit(handled, {0: 3}) == {("t", 0): 3, ("t", 1): 8}
    assert offsets_to_commit(handled, {1: 100}) == {("t", 0): 7, ("t", 1): 8}


def test_an_empty_partition_state_is_safe_past_its_last_record() -> None:
    assert PartitionReports().safe_commit_offset() == 0
