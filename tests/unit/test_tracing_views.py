"""Pure parts of the tracing agents and API: thresholds, restore, logview, chains, queries."""

from __future__ import annotations

from xml.etree import ElementTree

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.tracing import tables
from streams.tracing.model import (
    MINUTE_MS,
    PartitionReports,
    ProblemThresholds,
    ReportQueryError,
    ThresholdsError,
    assemble_chain,
    chain_sampled,
    describe_columns,
    describe_row,
    logview_keeps,
    minute_from_rows,
    parse_domain_thresholds,
    parse_report_time,
    sort_described,
    transaction_report_xml,
)
from streams.tracing.sketch import LatencySketch
from streams.tracing.tables import (
    PackedReportError,
    bucket_of,
    pack_rows,
    packed_columns,
    report_row,
    stored_row,
    unpack_parts,
    unpack_rows,
)
from tests.unit.test_tracing_model import T0_US, event, transaction, tree


def test_domain_thresholds_parse_and_refuse_with_the_offending_part() -> None:
    parsed = parse_domain_thresholds('{"shop": {"long_url": [500, 1000], "long_sql": [50]}}')
    assert parsed["shop"].long_url == (500, 1000) and parsed["shop"].long_sql == (50,)
    assert parsed["shop"].long_cache == ProblemThresholds().long_cache
    assert parse_domain_thresholds("") == {}
    for text, part in (
        ("[1]", "object keyed by domain"),
        ('{"shop": {"long_rpc": [1]}}', "shop.long_rpc"),
        ('{"shop": {"long_url": [900, 100]}}', "increasing"),
        ("{", "not JSON"),
    ):
        with pytest.raises(ThresholdsError, match=part):
            parse_domain_thresholds(text)


def test_a_closed_minute_rebuilt_from_its_rows_recognises_replays_and_takes_late_trees() -> None:
    trees = [tree(transaction("URL", f"/{i % 3}", 1000 * (i + 1)), message_id=f"m-{i}")
             for i in range(6)]  # fmt: skip
    live = PartitionReports(grace_ms=0)
    for offset, item in enumerate(trees):
        live.apply(item, offset)
    live.advance_idle(T0_US // 1000 + 2 * MINUTE_MS)
    rows = live.close_due()
    minute_ms = rows[0]["period_start_ms"]
    restored = minute_from_rows("orders", minute_ms, rows, last_offset=5, revision=0, late_count=0)
    again = restored.rows(rows[0]["closed_at_ms"], live.options)
    assert [_comparable(r) for r in again] == [_comparable(r) for r in rows]

    after_crash = PartitionReports(grace_ms=0)
    after_crash.restore_closed(restored)
    assert after_crash.apply(trees[2], 2).value == "duplicate"
    late = tree(transaction("URL", "/0", 7000), message_id="m-late")
    assert after_crash.apply(late, 9).value == "late"
    amended = after_crash.close_due()
    total = next(r for r in amended if r["host"] == "All" and r["name"] == "" and
                 r["report"] == "transaction")  # fmt: skip
    assert total["count"] == 7 and total["revision"] == 1 and total["late_count"] == 1


def _comparable(row: dict) -> dict:
    """A row with its sketch decoded: equal sketches may encode their buckets differently."""
    sketch = row["sketch"]
    return {**row, "sketch": LatencySketch.from_bytes(sketch) if sketch else None}


def test_stored_rows_round_trip_with_the_offset_and_bucket() -> None:
    state = PartitionReports(grace_ms=0)
    state.apply(tree(transaction("SQL", "q", 1500)), 3)
    state.advance_idle(T0_US // 1000 + 2 * MINUTE_MS)
    row = state.close_due()[0]
    stored = stored_row(row, 3)
    assert stored["last_offset"] == 3
    assert stored["bucket_ms"] == bucket_of("minute", row["period_start_ms"])
    assert stored["bucket_ms"] % 3_600_000 == 0
    assert report_row(stored, "minute") == row


def _closed_rows(names: list[tuple[str, str, int, bool]]) -> list[dict]:
    """The stored rows of one closed minute of (type, name, duration, failed) transactions."""
    state = PartitionReports(grace_ms=0)
    for offset, (type_, name, duration, failed) in enumerate(names):
        status = "Timeout" if failed else "0"
        item = tree(transaction(type_, name, duration, status=status), message_id=f"m-{offset}",
                    ip=f"10.0.0.{offset % 3}")  # fmt: skip
        state.apply(item, offset)
    state.advance_idle(T0_US // 1000 + 2 * MINUTE_MS)
    return [stored_row(row, len(names) - 1) for row in state.close_due()]


def minute_transactions(
    name_size: int, count: int
) -> st.SearchStrategy[list[tuple[str, str, int, bool]]]:
    """(type, name, duration, failed) transactions of one minute, as `_closed_rows` takes them."""
    transaction = st.tuples(st.sampled_from(["URL", "SQL", "Cache.redis"]),
                            st.text(min_size=1, max_size=name_size), st.integers(0, 10**9),
                            st.booleans())  # fmt: skip
    return st.lists(transaction, min_size=1, max_size=count)


@settings(max_examples=40, deadline=None)
@given(minute_transactions(30, 40), st.sampled_from([1 << 20, 300]))
def test_packed_groups_give_back_every_stored_row(
    names: list[tuple[str, str, int, bool]], part_bytes: int
) -> None:
    rows = _closed_rows(names)
    original = tables.PART_BYTES
    tables.PART_BYTES = part_bytes  # small parts: large groups split, and still come back whole
    try:
        packed = pack_rows(rows)
    finally:
        tables.PART_BYTES = original
    key = lambda r: (r["report"], r["host"], r["type"], r["name"])  # noqa: E731
    assert sorted(unpack_parts(packed), key=key) == sorted(rows, key=key)
    groups = {(p["report"], p["host"], p["type_group"]) for p in packed}
    assert len(packed) >= len(groups)
    for part in packed:
        inside = unpack_rows(part)
        assert part["row_count"] == len(inside)
        # per-type totals are their own group, name rows are grouped by type
        expected = {"" if r["name"] == "" else r["type"] for r in inside}
        assert expected == {part["type_group"]}


@settings(max_examples=40, deadline=None)
@given(minute_transactions(8, 30), st.sampled_from([None, "URL", "SQL"]))
def test_a_page_described_from_packed_columns_equals_its_rows_described_one_by_one(
    names: list[tuple[str, str, int, bool]], type_: str | None
) -> None:
    rows = _closed_rows(names)
    for report in ("transaction", "event", "problem"):
        shown = [r for r in rows if r["report"] == report and r["host"] == "All"
                 and (type_ is None or r["type"] == type_)]  # fmt: skip
        packed = pack_rows(shown)
        cells = [(p["format"], p["rows"], p["last_offset"]) for p in packed
                 if p["type_group"] in ("", type_)]  # fmt: skip
        columns = packed_columns(cells, type_)
        size = len(columns["count"])
        start_ms = shown[0]["period_start_ms"] if shown else 0
        fixed = {"domain": ["orders"] * size, "host": ["All"] * size,
                 "period_start_ms": [start_ms] * size}  # fmt: skip
        described = describe_columns(report, "minute", {**columns, **fixed})
        expected = [describe_row(report_row(r, "minute")) for r in shown
                    if type_ is not None or r["name"] == ""]  # fmt: skip
        key = lambda r: (r["type"], r["name"])  # noqa: E731
        assert sorted(described, key=key) == sorted(expected, key=key)


def test_a_packed_group_of_an_unknown_format_is_refused_with_what_to_do() -> None:
    packed = pack_rows(_closed_rows([("URL", "/", 1000, False)]))[0]
    with pytest.raises(PackedReportError, match="upgrade"):
        unpack_rows({**packed, "format": 99})


def test_logview_keeps_problems_and_whole_sampled_chains() -> None:
    plain = tree(transaction("URL", "/", 1000))
    slow = tree(transaction("URL", "/", 1_500_000))
    failed = tree(transaction("Service", "x", 10, status="Timeout"))
    error = tree(transaction("Job", "x", 10, children=[event("Exception", "E", status="ERROR")]))
    thresholds = ProblemThresholds()
    assert not logview_keeps(plain, thresholds, 0.0)
    assert all(logview_keeps(t, thresholds, 0.0) for t in (slow, failed, error))
    assert logview_keeps(plain, thresholds, 1.0)
    chains = [f"shop-0a000001-1-{i}" for i in range(4000)]
    kept = [c for c in chains if chain_sampled(c, 0.1)]
    assert 300 < len(kept) < 500
    assert kept == [c for c in chains if chain_sampled(c, 0.1)]
    caller = {**plain, "message_id": chains[0]}
    callee = {**plain, "message_id": "stock-1", "root_message_id": chains[0],
              "parent_message_id": chains[0], "domain": "stock"}  # fmt: skip
    assert logview_keeps(caller, thresholds, 0.1) == logview_keeps(callee, thresholds, 0.1)


def test_a_chain_assembles_from_any_of_its_trees() -> None:
    root = {**tree(transaction("URL", "/order", 5000)), "message_id": "shop-1"}
    middle = {**tree(transaction("URL", "/reserve", 3000, at_us=T0_US + 10)),
              "message_id": "shop-2", "parent_message_id": "shop-1", "root_message_id": "shop-1",
              "domain": "stock"}  # fmt: skip
    leaf = {**tree(transaction("URL", "/pay", 1000, at_us=T0_US + 20)),
            "message_id": "shop-3", "parent_message_id": "shop-2", "root_message_id": "shop-1",
            "domain": "pay"}  # fmt: skip
    chain = assemble_chain([leaf, middle, root], "shop-3")
    assert chain is not None and chain["root_message_id"] == "shop-1"
    top = chain["chain"]
    assert top["message_id"] == "shop-1"
    assert top["callees"][0]["message_id"] == "shop-2"
    assert top["callees"][0]["callees"][0]["domain"] == "pay"
    assert assemble_chain([root], "nope") is None


def test_report_time_parameter_names_itself_when_wrong() -> None:
    assert parse_report_time("20240301") == ("day", 1709251200000)
    assert parse_report_time("2024030113") == ("hour", 1709251200000 + 13 * 3_600_000)
    assert parse_report_time("202403011305")[0] == "minute"
    for bad in ("2024", "2024133100", "yesterday"):
        with pytest.raises(ReportQueryError) as caught:
            parse_report_time(bad)
        assert caught.value.parameter == "date"


def test_rows_sort_and_render_as_cat_xml() -> None:
    state = PartitionReports(grace_ms=0)
    for offset, (name, duration) in enumerate([("/a", 9000), ("/b", 1000), ("/b", 3000)]):
        state.apply(tree(transaction("URL", name, duration), message_id=f"m-{offset}"), offset)
    state.advance_idle(T0_US // 1000 + 2 * MINUTE_MS)
    rows = [describe_row(r) for r in state.close_due()
            if r["report"] == "transaction" and r["host"] == "All"]  # fmt: skip
    names = [r for r in rows if r["name"]]
    assert [r["name"] for r in sort_described(names, "count", True)] == ["/b", "/a"]
    assert [r["name"] for r in sort_described(names, "max_ms", True)] == ["/a", "/b"]
    with pytest.raises(ReportQueryError) as caught:
        sort_described(names, "colour", True)
    assert caught.value.parameter == "sort"
    xml = transaction_report_xml("orders", "minute", rows[0]["period_start_ms"], "All", rows)
    assert '<transaction-report domain="orders"' in xml
    assert '<type id="URL" totalCount="3"' in xml
    assert '<name id="/b" totalCount="2"' in xml and 'max="3.00"' in xml
    document = ElementTree.fromstring(xml.encode())
    durations = document.findall("./machine/type/name[@id='/b']/duration")
    assert {(d.get("value"), d.get("count")) for d in durations} == {("1", "1"), ("4", "1")}


def test_cat_xml_parses_whatever_characters_a_name_holds() -> None:
    state = PartitionReports(grace_ms=0)
    state.apply(tree(transaction("URL", '/a\x01b\x1f<&>"', 1000)), 0)
    state.advance_idle(T0_US // 1000 + 2 * MINUTE_MS)
    rows = [describe_row(r) for r in state.close_due()
            if r["report"] == "transaction" and r["host"] == "All"]  # fmt: skip
    xml = transaction_report_xml("orders\x00", "minute", rows[0]["period_start_ms"], "All", rows)
    document = ElementTree.fromstring(xml.encode())
    assert document.get("domain") == "orders\ufffd"
    assert document.find("./machine/type/name").get("id") == '/a\ufffdb\ufffd<&>"'


def test_groups_written_in_format_1_still_read_without_bucket_samples() -> None:
    """Format 2 appended `bucket_samples`; groups written before it read as if it were None."""
    rows = [r for r in _closed_rows([("URL", "/", 1000, False)]) if r["host"] == "All"]
    current = pack_rows(rows)[0]
    assert current["format"] == 2
    old_cell = orjson.dumps([values[:-1] for values in orjson.loads(current["rows"])])
    old = {**current, "format": 1, "rows": old_cell}
    size = current["row_count"]
    assert [r["bucket_samples"] for r in unpack_rows(old)] == [None] * size
    assert [{k: v for k, v in r.items() if k != "bucket_samples"} for r in unpack_rows(old)] == [
        {k: v for k, v in r.items() if k != "bucket_samples"} for r in unpack_rows(current)
    ]
    columns = packed_columns([(1, old_cell, 7)])
    assert list(columns["bucket_samples"]) == [None] * size
    assert list(columns["name"]) == list(packed_columns([(2, current["rows"], 7)])["name"])
