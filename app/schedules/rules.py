"""When a schedule fires: a cron expression in a time zone (cronsim), or a fixed interval."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from app.errors import InvalidInput

# The longest interval a schedule may have (a year and a day), and the shortest.
MAX_INTERVAL_SECONDS = 366 * 24 * 3600
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TINY = timedelta(microseconds=1)


def zone(name: str, field: str = "timezone") -> ZoneInfo:
    """The IANA time zone `name`, or InvalidInput naming `field`."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: "America" is a folder
        raise InvalidInput(
            f"unknown time zone {name!r} (an IANA name such as Europe/Berlin)", field=field
        ) from exc


@dataclass(frozen=True)
class Rule:
    """A cron expression (evaluated in `timezone`, DST by zoneinfo) or an interval in seconds
    (ticks at whole multiples since the Unix epoch, so every process computes the same ones)."""

    cron: str | None
    interval_seconds: int | None
    timezone: str = "UTC"

    @classmethod
    def parse(cls, cron: str | None, interval_seconds: int | None, timezone: str = "UTC") -> Rule:
        """A checked rule; InvalidInput naming the field at fault."""
        if (cron is None) == (interval_seconds is None):
            raise InvalidInput("give exactly one of cron and interval_seconds", field="cron")
        tz = zone(timezone)
        if cron is not None:
            try:
                next(CronSim(cron, datetime.now(tz)))
            except (CronSimError, StopIteration, ValueError) as exc:
                raise InvalidInput(
                    f"invalid cron expression {cron!r}: {exc}", field="cron"
                ) from exc
        elif interval_seconds is not None and not 1 <= interval_seconds <= MAX_INTERVAL_SECONDS:
            raise InvalidInput(
                f"interval_seconds must be 1..{MAX_INTERVAL_SECONDS}", field="interval_seconds"
            )
        return cls(cron, interval_seconds, timezone)

    def next_after(self, instant: datetime) -> datetime:
        """The first tick strictly after `instant` (UTC)."""
        if self.interval_seconds is not None:
            k = int((instant - _EPOCH).total_seconds() // self.interval_seconds) + 1
            return _EPOCH + timedelta(seconds=k * self.interval_seconds)
        assert self.cron is not None
        local = instant.astimezone(ZoneInfo(self.timezone))
        return next(CronSim(self.cron, local)).astimezone(UTC)

    def latest(self, now: datetime) -> datetime:
        """The last tick at or before `now` (UTC)."""
        if self.interval_seconds is not None:
            k = int((now - _EPOCH).total_seconds() // self.interval_seconds)
            return _EPOCH + timedelta(seconds=k * self.interval_seconds)
        exact = self.next_after(now - _TINY)
        if exact <= now:
            return exact
        assert self.cron is not None
        local = now.astimezone(ZoneInfo(self.timezone))
        return next(CronSim(self.cron, local, reverse=True)).astimezone(UTC)
