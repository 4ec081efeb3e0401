"""Pure dead-letter logic: filters, counts, the loop guard, headers and offset sets."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from streams.bus.replay_model import (
    ORIGIN_HEADER,
    REPLAYS_HEADER,
    DeadLetterFilter,
    OffsetSet,
    decide_dead_letter_replay,
    hex_dump,
    replay_headers,
    replays_so_far,
    summarise,
)


def letter(**changes: object) -> dict:
    record = {
        "reason": "point has no tags",
        "error_type": "validation",
        "source_topic": "metrics.points",
        "partition": 2,
        "offset": 40,
        "timestamp_ms": 1000,
        "failed_at_ms": 2000,
        "agent": "metrics.track_latest",
        "key": b"cpu",
        "value": b"\xc3\x01...",
        "headers": {},
    }
    record.update(changes)
    return record


def test_filters_match_error_type_or_reason_text() -> None:
    assert DeadLetterFilter(reason="validation").matches(letter())
    assert DeadLetterFilter(reason="NO TAGS").matches(letter())
    assert not DeadLetterFilter(reason="decode").matches(letter())
    assert DeadLetterFilter(source_topic="metrics.points").matches(letter())
    assert not DeadLetterFilter(source_topic="logs.records").matches(letter())
    assert not DeadLetterFilter(agent="sinks.points_to_cassandra").matches(letter())
    assert DeadLetterFilter().matches(letter())


def test_summaries_count_by_source_topic_and_error_type() -> None:
    groups = summarise(
        [
            letter(failed_at_ms=5),
            letter(failed_at_ms=9, reason="value out of range"),
            letter(failed_at_ms=7),
            letter(source_topic="logs.records", error_type="decode", reason="not Avro"),
        ]
    )
    assert [(g.source_topic, g.error_type, g.count) for g in groups] == [
        ("metrics.points", "validation", 3),
        ("logs.records", "decode", 1),
    ]
    assert groups[0].first_failed_ms == 5 and groups[0].last_failed_ms == 9
    assert groups[0].common_reason == "point has no tags"


def test_replay_headers_count_up_and_name_the_origin() -> None:
    first = dict(replay_headers({"trace": b"abc"}, 0, 17))
    assert first == {"trace": b"abc", REPLAYS_HEADER: b"1", ORIGIN_HEADER: b"0:17"}
    second = dict(replay_headers(first, 0, 99))
    assert second[REPLAYS_HEADER] == b"2" and second[ORIGIN_HEADER] == b"0:99"
    assert replays_so_far({REPLAYS_HEADER: b"garbage"}) == 0
    assert replays_so_far({}) == 0


def test_the_loop_guard_refuses_past_the_limit_and_sends_each_record_once() -> None:
    done = OffsetSet([(3, 5)])
    sent: set[tuple[str, int, int]] = set()
    decide = decide_dead_letter_replay
    assert decide(letter(), 10, limit=2, replayed_offsets=done, sent_origins=sent).action == "send"
    sent.add(("metrics.points", 2, 40))
    same_record = letter(agent="sinks.points_to_cassandra")
    assert (
        decide(same_record, 11, limit=2, replayed_offsets=done, sent_origins=sent).action
        == "duplicate"
    )
    assert decide(letter(), 4, limit=2, replayed_offsets=done, sent_origins=set()).action == "done"
    tired = letter(offset=41, headers={REPLAYS_HEADER: b"2"})
    decision = decide(tired, 12, limit=2, replayed_offsets=done, sent_origins=sent)
    assert decision.action == "exhausted" and "limit is 2" in decision.detail
    empty = letter(offset=42, value=None)
    assert decide(empty, 13, limit=2, replayed_offsets=done, sent_origins=sent).action == "no_value"


@given(st.lists(st.integers(0, 300), max_size=200))
def test_offset_sets_hold_exactly_what_was_added(offsets: list[int]) -> None:
    collected = OffsetSet()
    for offset in offsets:
        collected.add(offset)
    assert len(collected) == len(set(offsets))
    assert all(offset in collected for offset in offsets)
    assert all(offset not in collected for offset in set(range(-2, 303)) - set(offsets))
    intervals = collected.as_list()
    assert all(a[1] < b[0] for a, b in pairwise(intervals)), "merged"
    assert OffsetSet(intervals).as_list() == intervals


def test_hex_dump_shows_offsets_bytes_and_text() -> None:
    dump = hex_dump(b"\xc3\x01hello, world!\x00\xff" + bytes(20), width=16, limit=32)
    first = dump.splitlines()[0]
    assert first.startswith("00000000  c3 01 68 65")
    assert first.endswith("..hello, world!.")
    assert dump.splitlines()[-1] == "... 5 more bytes"
