"""Pure parts of the latency, porting and advice checks: schedules, bands, caveats."""

from __future__ import annotations

import pytest

from replicator.queries.latency import band_of, schedule
from replicator.queries.port import CAVEATS, PortError, caveats_for, suggest_postgres


def test_every_round_times_every_set_and_the_runs_left_over_join_the_last() -> None:
    plan = schedule(21, 100, 5)
    assert len(plan) == 4  # four whole cycles: one per round
    for order in plan:
        assert set(order) == set(range(21))
    assert sum(len(r) for r in plan) == 100
    assert plan[-1][21:] == list(range(16))


def test_a_schedule_times_each_set_once_even_with_fewer_runs() -> None:
    assert schedule(4, 2, 5) == [[0, 1, 2, 3]]
    assert schedule(1, 10, 5) == [[0, 0]] * 5
    assert schedule(3, 10, 2) == [[0, 1, 2], [0, 1, 2, 0, 1, 2, 0]]
    with pytest.raises(ValueError):
        schedule(0, 10, 5)


def test_bands_follow_the_spread_of_the_per_round_p95() -> None:
    assert band_of([5.0, 19.9, 20.0], 20) == "ok"  # the target itself is met
    assert band_of([18.0, 21.0, 19.0], 20) == "near"
    assert band_of([21.0, 66.0], 20) == "slow"
    assert band_of([66.0], 20) == "slow"
    with pytest.raises(ValueError):
        band_of([], 20)


def keys(text: str, columns: dict[str, list[tuple[str, str]]] | None = None) -> set[str]:
    return {c.key for c in caveats_for(text, columns or {})}


def test_caveats_read_the_code_and_the_declared_columns() -> None:
    assert keys("SELECT id FROM t WHERE name LIKE :p") == {"like_case"}
    assert keys("SELECT id FROM t WHERE note = 'LIKE this' ORDER BY id") == {"null_order"}
    assert "affinity" in keys("SELECT id FROM t WHERE code > 50", {"code": [("TEXT", "BINARY")]})
    assert "affinity" not in keys("SELECT id FROM t WHERE n > 50", {"n": [("INTEGER", "BINARY")]})
    assert "integer_division" in keys("SELECT amount / 2 FROM t", {"amount": [("NUMERIC", "")]})
    assert "integer_division" not in keys("SELECT n / 2 FROM t", {"n": [("INTEGER", "")]})
    assert "nocase" in keys("SELECT name FROM t", {"name": [("TEXT", "NOCASE")]})
    assert "nocase" in keys("SELECT name FROM t ORDER BY name COLLATE NOCASE")
    assert "collation" in keys("SELECT name FROM t ORDER BY name", {"name": [("TEXT", "")]})
    assert "timestamps" in keys("SELECT id FROM t WHERE julianday(at) > julianday(:s)")
    assert "date_functions" in keys("SELECT date(at) FROM t")
    assert "json" in keys("SELECT json_extract(doc, '$.a') FROM t")
    assert len({c.key for c in CAVEATS}) == len(CAVEATS)


def test_sqlglot_ports_keep_named_placeholders() -> None:
    text = suggest_postgres("SELECT ifnull(a, 1) FROM t WHERE b = :b AND c > :c ORDER BY a")
    assert text == "SELECT COALESCE(a, 1) FROM t WHERE b = :b AND c > :c ORDER BY a NULLS FIRST"
    with pytest.raises(PortError) as caught:
        suggest_postgres("SELEC a FROM")
    assert "\x1b" not in str(caught.value)


def test_under_load_the_clients_are_the_rounds() -> None:
    """One p95 from a few samples under load flipped between same and slow from run to
    run; each client's p95 of each set is a round, judged like the rounds alone."""
    from replicator.queries.load import LoadResult, SideLoad
    from replicator.queries.report import Latency

    def side(client_p95: dict[int, list[float]]) -> SideLoad:
        all_ms = [v for vs in client_p95.values() for v in vs]
        return SideLoad(4, len(all_ms), 1.0, 1.0, Latency.of(all_ms), client_p95=client_p95)

    def band(client_p95: dict[int, list[float]]) -> str:
        return LoadResult(4, 10, 20.0, postgres=side(client_p95)).band

    assert band({0: [5.0, 6.0, 7.0, 8.0], 1: [1.0, 2.0, 1.0, 3.0]}) == "ok"
    assert band({0: [5.0, 26.0, 7.0, 8.0], 1: [1.0, 2.0, 1.0, 3.0]}) == "near"
    assert band({0: [5.0, 6.0, 7.0, 8.0], 1: [21.0, 22.0, 30.0, 40.0]}) == "slow"
    failed = LoadResult(4, 10, 20.0, postgres=SideLoad(4, 0, 0.0, 0.0, None, errors=4))
    assert failed.band == "slow" and failed.over_target
    assert not LoadResult(4, 10, 20.0, postgres=side({0: [5.0, 26.0]})).over_target
