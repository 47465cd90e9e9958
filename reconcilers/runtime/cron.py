"""Crontab schedules: parse, find due times, and measure a run's period (design.md §4.3).

A controller on a crontab has no fixed interval, so everything that measures against "the
interval" (the too-soon guard, message expiry, the run timeout rule, staleness, the
interval gauge) measures against the run's period instead: the gap between its due time
(the newest fire time at or before it) and the fire time before that, in the crontab's
time zone. A weekday-only schedule therefore has a period of one day on a Tuesday and of
three days on a Monday, and a daily 03:00 run spans 23 h on the day clocks go forward.

The fields are expanded by Celery's own parser, and a day matches the way beat matches it
(day of month AND day of week AND month, not cron(8)'s OR), so the times computed here
are the times beat sends.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import ParseException, crontab

# A day-of-month/day-of-week/month combination repeats every 28 years of the Gregorian
# calendar (leap years and weekdays both cycle; no century rule falls inside 2000-2099),
# so two fire times (what a period needs) lie within 56 years, or the crontab never fires
# ("0 0 30 2 *").
SEARCH_SPAN_DAYS = 56 * 366 + 7
# How far ahead the shortest gap between two fire times is looked for (run timeout rule,
# message expiry): a year covers every month and both DST changes; the fire-count cap
# bounds the work for a crontab that fires every minute.
SHORTEST_GAP_HORIZON_DAYS = 366
SHORTEST_GAP_MAX_FIRES = 2000


class CrontabError(ValueError):
    """The expression or time zone is refused; the message says why."""


@dataclass(frozen=True)
class Crontab:
    """A parsed five-field expression (minute hour day-of-month month day-of-week) in a zone."""

    expression: str
    timezone: str
    minute: str
    hour: str
    day_of_month: str
    month_of_year: str
    day_of_week: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]  # 0 = Sunday, as in Celery

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def _day_matches(self, day: date) -> bool:
        return (
            day.month in self.months
            and day.day in self.days_of_month
            and (day.isoweekday() % 7) in self.days_of_week
        )

    def _fires_on(self, day: date) -> list[datetime]:
        """The day's fire times as aware UTC instants, ascending. A local time skipped by a
        DST change maps forward (zoneinfo's fold=0 rule); duplicates collapse."""
        zone = self.zone
        instants = {
            datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone).astimezone(UTC)
            for hour in self.hours
            for minute in self.minutes
        }
        return sorted(instants)

    def fires_before(self, at: datetime) -> Iterator[datetime]:
        """Fire times at or before `at`, newest first (stops after SEARCH_SPAN_DAYS)."""
        day = at.astimezone(self.zone).date()
        for _ in range(SEARCH_SPAN_DAYS):
            if self._day_matches(day):
                for instant in reversed(self._fires_on(day)):
                    if instant <= at:
                        yield instant
            day -= timedelta(days=1)

    def fires_after(self, at: datetime) -> Iterator[datetime]:
        """Fire times strictly after `at`, oldest first (stops after SEARCH_SPAN_DAYS)."""
        day = at.astimezone(self.zone).date()
        for _ in range(SEARCH_SPAN_DAYS):
            if self._day_matches(day):
                for instant in self._fires_on(day):
                    if instant > at:
                        yield instant
            day += timedelta(days=1)

    def next_fire(self, after: datetime) -> datetime | None:
        return next(self.fires_after(after), None)

    def period_seconds_at(self, at: datetime) -> int:
        """The period of a run started at `at`: its due time (newest fire at or before `at`)
        minus the fire time before that, in whole seconds, at least 1."""
        fires = self.fires_before(at)
        due = next(fires, None)
        previous = next(fires, None)
        if due is None or previous is None:  # refused at parse time; defensive
            return self.shortest_gap_seconds(at)
        return max(int((due - previous).total_seconds()), 1)

    def shortest_gap_seconds(self, start: datetime) -> int:
        """The shortest gap between two consecutive fire times within a year after `start`
        (at most SHORTEST_GAP_MAX_FIRES fires): what a run timeout must fit in, and how long
        a message may wait before it expires."""
        return _shortest_gap(self, start.replace(second=0, microsecond=0))


@functools.lru_cache(maxsize=256)
def _shortest_gap(cron: Crontab, start: datetime) -> int:
    horizon = start + timedelta(days=SHORTEST_GAP_HORIZON_DAYS)
    shortest: float | None = None
    previous: datetime | None = None
    for count, instant in enumerate(cron.fires_after(start)):
        if instant > horizon or count >= SHORTEST_GAP_MAX_FIRES:
            break
        if previous is not None:
            gap = (instant - previous).total_seconds()
            shortest = gap if shortest is None else min(shortest, gap)
        previous = instant
    return max(int(shortest), 1) if shortest is not None else 1


@functools.lru_cache(maxsize=256)
def crontab_parse(expression: str, timezone: str = "UTC") -> Crontab:
    """Parse `expression` in `timezone` (an IANA name). Raises CrontabError when either is
    malformed or when the crontab never fires (e.g. the 30th of February)."""
    fields = expression.split()
    if len(fields) != 5:
        raise CrontabError(
            f"must have 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}"
        )
    if not timezone or timezone != timezone.strip():
        raise CrontabError(f"unknown time zone {timezone!r}")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise CrontabError(f"unknown time zone {timezone!r}") from None
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        parsed: Any = crontab(  # its expanded sets are set in __init__, untyped
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )
    except (ParseException, ValueError) as exc:
        raise CrontabError(f"cannot parse {expression!r}: {exc}") from None
    cron = Crontab(
        expression=" ".join(fields),
        timezone=timezone,
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
        minutes=tuple(sorted(parsed.minute)),
        hours=tuple(sorted(parsed.hour)),
        days_of_month=frozenset(parsed.day_of_month),
        months=frozenset(parsed.month_of_year),
        days_of_week=frozenset(parsed.day_of_week),
    )
    # Two fire times are needed to have a period at all; search from a fixed day so the
    # verdict does not depend on when it is asked.
    fires = cron.fires_after(datetime(2000, 1, 1, tzinfo=UTC))
    if next(fires, None) is None or next(fires, None) is None:
        raise CrontabError(
            f"{expression!r} never fires (no two matching days in {SEARCH_SPAN_DAYS // 366} years)"
        )
    return cron
