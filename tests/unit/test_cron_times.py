"""Fire times of a schedule (orchestrator/cron.py), with a real IANA zone and an injected time:
the documented DST rule (a time in a spring-forward gap fires once, at the first instant after
the gap; a time in a fall-back repeat fires once, at its first occurrence), the next time taken
from the last one handled (not from now), and catch_up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

import pytest

from orchestrator.cron import MAX_CATCH_UP, BadCron, Cron, plan

BERLIN = ZoneInfo("Europe/Berlin")


def local(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN, fold=fold)  # type: ignore[misc]


def times(cron: Cron, after: datetime, n: int) -> list[datetime]:
    return list(islice(cron.after(after), n))


def test_a_time_in_the_spring_forward_gap_fires_once_at_the_first_instant_after_it() -> None:
    # Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    daily = Cron.parse("30 2 * * *", "Europe/Berlin")
    got = times(daily, local(2026, 3, 28, 12, 0), 3)
    assert got == [
        local(2026, 3, 29, 3, 0).astimezone(UTC),  # 01:00Z: the gap's end, once
        local(2026, 3, 30, 2, 30).astimezone(UTC),
        local(2026, 3, 31, 2, 30).astimezone(UTC),
    ]
    assert got[0] == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_a_time_in_the_fall_back_repeat_fires_once_at_its_first_occurrence() -> None:
    # Europe/Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    daily = Cron.parse("30 2 * * *", "Europe/Berlin")
    got = times(daily, local(2026, 10, 24, 12, 0), 2)
    assert got == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 26, 1, 30, tzinfo=UTC)]
    # Handled at the first 02:30, the second one (fold=1, 01:30Z) is not another fire time.
    assert daily.next_after(got[0]) == got[1]


def test_an_every_half_hour_schedule_runs_on_the_real_clock_through_both_changes() -> None:
    every = Cron.parse("*/30 * * * *", "Europe/Berlin")
    back = times(every, local(2026, 10, 25, 1, 45), 5)  # 02:00 and 02:30 happen twice: each fires
    assert [t.strftime("%H:%M") for t in back] == ["00:00", "00:30", "01:00", "01:30", "02:00"]
    forward = times(every, local(2026, 3, 29, 1, 15), 3)  # 02:00 and 02:30 never happen
    assert [t.astimezone(BERLIN).strftime("%H:%M") for t in forward] == ["01:30", "03:00", "03:30"]


def test_the_next_time_is_computed_from_the_last_handled_not_from_now() -> None:
    hourly = Cron.parse("0 * * * *", "UTC")
    handled = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    now = datetime(2026, 1, 1, 10, 59, 59, 900_000, tzinfo=UTC)
    assert plan(hourly, handled, now, "latest", 10).fire == []
    late = plan(hourly, handled, now + timedelta(seconds=5), "latest", 10)  # 11:00 due, 4.9 s late
    assert late.fire == [datetime(2026, 1, 1, 11, 0, tzinfo=UTC)] and late.missed == 0


@pytest.mark.parametrize(
    ("catch_up", "late_s", "fired", "missed"),
    [
        ("none", 5, [15], 4),  # the latest is on time (within on_time_s): it fires, the rest do not
        ("none", 30, [], 5),  # the latest is late too: nothing fires
        ("latest", 30, [15], 4),
        ("all", 30, [11, 12, 13, 14, 15], 0),
    ],
)
def test_catch_up(catch_up: str, late_s: int, fired: list[int], missed: int) -> None:
    minutely = Cron.parse("* * * * *", "UTC")
    handled = datetime(2026, 1, 1, 10, 10, tzinfo=UTC)
    now = datetime(2026, 1, 1, 10, 15, tzinfo=UTC) + timedelta(seconds=late_s)
    p = plan(minutely, handled, now, catch_up, 10)  # type: ignore[arg-type]
    assert [t.minute for t in p.fire] == fired and p.missed == missed
    assert p.through == datetime(2026, 1, 1, 10, 15, tzinfo=UTC)


def test_catch_up_all_is_bounded_to_the_latest_hundred() -> None:
    every_second = Cron.parse("* * * * * *", "UTC")
    handled = datetime(2026, 1, 1, tzinfo=UTC)
    p = plan(every_second, handled, handled + timedelta(seconds=250), "all", 10)
    assert len(p.fire) == MAX_CATCH_UP and p.missed == 150
    assert p.fire[0] == handled + timedelta(seconds=151) and p.fire[-1] == handled + timedelta(seconds=250)
    # A day of missed seconds is not gone through one by one: bounded work, still the latest 100.
    day = plan(every_second, handled, handled + timedelta(days=1), "all", 10)
    assert day.fire[-1] == handled + timedelta(days=1) and len(day.fire) == MAX_CATCH_UP and day.missed > 10_000


@pytest.mark.parametrize(
    ("expression", "zone", "field"),
    [("61 * * * *", "UTC", "cron"), ("* * *", "UTC", "cron"), ("0 0 30 2 *", "UTC", "cron"),
     ("* * * * *", "Europe/Atlantis", "timezone"), ("* * * * *", "../../etc/passwd", "timezone")],
)  # fmt: skip
def test_a_bad_cron_or_zone_is_named(expression: str, zone: str, field: str) -> None:
    with pytest.raises(BadCron) as caught:
        Cron.parse(expression, zone)
    assert caught.value.field == field
