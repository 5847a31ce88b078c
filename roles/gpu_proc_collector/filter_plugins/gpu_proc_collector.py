"""Filters turning the Kubernetes-style settings (cron schedule, resource limits) into systemd's:

- cron_to_oncalendar: the cron schedule ("*/1 * * * *") as a timer's OnCalendar= expression;
- cpu_quota: a Kubernetes CPU limit ("100m") as CPUQuota= ("10%");
- memory_max: a Kubernetes memory quantity ("64Mi") as MemoryMax= ("64M", systemd's M being MiB);
- schedule_period: the longest time between two runs of a schedule, in seconds (the config's nominal_interval).
"""

from __future__ import annotations

import re

FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
DAY_NAMES = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
NICKNAMES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
             "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}


class CronError(ValueError):
    pass


def _number(text: str, field: int) -> int:
    name, low, high = FIELDS[field]
    lowered = text.lower()
    if field == 3 and lowered in MONTH_NAMES:
        return MONTH_NAMES.index(lowered) + 1
    if field == 4 and lowered in WEEKDAY_NAMES:
        return WEEKDAY_NAMES.index(lowered)
    if not text.isdigit() or not low <= int(text) <= high:
        raise CronError(f"{name} {text!r} is not a number from {low} to {high}")
    return int(text)


def _part(part: str, field: int) -> str:
    """One comma-separated item of a cron field, in systemd's syntax for that component."""
    low = FIELDS[field][1]
    base, _, step = part.partition("/")
    if step and (not step.isdigit() or int(step) == 0):
        raise CronError(f"bad step in {part!r}")
    if base == "*":
        return f"{low}/{step}" if step else "*"
    start_text, dash, end_text = base.partition("-")
    start = _number(start_text, field)
    if field == 4:
        if dash or step:
            end = _number(end_text, field) if dash else 6
            days = range(start, end + 1, int(step) if step else 1)
            return ",".join(DAY_NAMES[d] for d in days)
        return DAY_NAMES[start]
    if dash:
        end = _number(end_text, field)
        if end < start:
            raise CronError(f"range {part!r} runs backwards")
        return f"{start}..{end}" if not step else ",".join(str(v) for v in range(start, end + 1, int(step)))
    return f"{start}/{step}" if step else str(start)


def cron_to_oncalendar(schedule: str) -> str:
    """`*/5 * * * *` -> `*-*-* *:0/5:00`. A value that already reads as systemd's (contains ':' or is one of its
    shorthands such as `hourly`) is returned unchanged; `systemd-analyze calendar` checks it on the host."""
    schedule = " ".join(str(schedule).split())
    if ":" in schedule or re.fullmatch(r"(minutely|hourly|daily|weekly|monthly|yearly|annually|quarterly|"
                                       r"semiannually)", schedule):
        return schedule
    schedule = NICKNAMES.get(schedule, schedule)
    fields = schedule.split(" ")
    if len(fields) != 5:
        raise CronError(f"a cron schedule has 5 fields (minute hour day month weekday), got {schedule!r}")
    minute, hour, dom, month, dow = (",".join(_part(p, i) for p in f.split(",")) for i, f in enumerate(fields))
    if dom != "*" and dow != "*":
        raise CronError("cron runs when either day of month or day of week matches; a systemd timer needs both "
                        "to match, so set only one of them")
    weekday = "" if dow == "*" else f"{dow} "
    return f"{weekday}*-{month}-{dom} {hour}:{minute}:00"


def cpu_quota(limit: object) -> str:
    """Kubernetes CPU units -> CPUQuota=: "100m" -> "10%", "0.5" -> "50%", "2" -> "200%"."""
    text = str(limit).strip()
    try:
        millicores = float(text[:-1]) if text.endswith("m") else float(text) * 1000
    except ValueError:
        raise CronError(f"CPU limit {text!r} is not a Kubernetes CPU quantity such as 100m or 0.5") from None
    if millicores <= 0:
        raise CronError(f"CPU limit {text!r} must be positive")
    percent = millicores / 10
    return f"{percent:g}%"


_MEMORY_UNITS = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "Ki": 1024, "Mi": 1024**2,
                 "Gi": 1024**3, "Ti": 1024**4}


def memory_max(limit: object) -> str:
    """Kubernetes memory quantity -> MemoryMax=: binary units map onto systemd's (K/M/G are powers of 1024),
    decimal ones are written out in bytes: "64Mi" -> "64M", "128M" -> "128000000"."""
    text = str(limit).strip()
    found = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", text)
    if not found:
        raise CronError(f"memory limit {text!r} is not a Kubernetes quantity such as 64Mi or 1Gi")
    number, unit = float(found.group(1)), found.group(2) or ""
    if unit.endswith("i") and number.is_integer():
        return f"{int(number)}{unit[0].upper()}"
    return str(int(number * _MEMORY_UNITS[unit]))


DAY_S = 86400
# systemd.time(7), "Calendar Events": the shorthands' normalized forms. Those that repeat by calendar months are
# given their longest gap (a month of 31 days, a quarter of 92, half a year of 184, a leap year).
_SHORTHAND_PERIODS = {"minutely": 60, "hourly": 3600, "daily": DAY_S, "weekly": 7 * DAY_S, "monthly": 31 * DAY_S,
                      "quarterly": 92 * DAY_S, "semiannually": 184 * DAY_S, "yearly": 366 * DAY_S,
                      "annually": 366 * DAY_S}
_TIME_RANGES = ((0, 23), (0, 59), (0, 59))  # hour, minute, second


def _calendar_values(text: str, low: int, high: int) -> set[int]:
    """One time component of an OnCalendar= expression (systemd.time(7)): `*`, `N`, `A..B`, a `/STEP` after any
    of them (a start, `*` or a range), and comma lists of these. ValueError for anything else."""
    values: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        step = int(step_text) if slash else 1
        if step <= 0:
            raise ValueError(item)
        if base == "*":
            start, end = low, high
        elif ".." in base:
            start_text, _, end_text = base.partition("..")
            start, end = int(start_text), int(end_text)
        else:
            start = int(base)
            end = high if slash else start
        if not low <= start <= end <= high:
            raise ValueError(item)
        values.update(range(start, end + 1, step))
    return values


def _weekdays(text: str) -> set[int]:
    """`Mon,Wed..Fri` (names of three letters or whole) as day numbers, Monday 0."""
    names = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

    def day(name: str) -> int:
        if name[:3].lower() not in names:
            raise ValueError(name)
        return names.index(name[:3].lower())

    days: set[int] = set()
    for item in text.split(","):
        first, dots, last = item.partition("..")
        start, end = day(first), day(last) if dots else day(first)
        days.update(range(start, end + 1) if start <= end else [*range(start, 7), *range(0, end + 1)])
    return days


def _longest_gap(times: list[int], cycle: int) -> int:
    ordered = sorted(times)
    gaps = [b - a for a, b in zip(ordered, ordered[1:])]
    return max([*gaps, ordered[0] + cycle - ordered[-1]])


def _run_times(calendar: str) -> tuple[list[int], int]:
    """The seconds within one cycle (a day, or a week with weekdays) at which an OnCalendar= expression fires, and
    the cycle's length. ValueError for what schedule_period does not reason about."""
    words = calendar.split()
    days = None
    if words and ":" not in words[0] and "-" not in words[0]:
        days = _weekdays(words.pop(0))
    if len(words) == 2 and words[0] in ("*-*-*", "*-*"):
        words = words[1:]
    if len(words) != 1 or words[0].count(":") not in (1, 2):
        raise ValueError(calendar)
    parts = words[0].split(":")
    if len(parts) == 2:
        parts.append("00")  # systemd.time(7): seconds default to 0
    hours, minutes, seconds = (sorted(_calendar_values(p, low, high)) for p, (low, high) in zip(parts, _TIME_RANGES))
    day_times = [h * 3600 + m * 60 + s for h in hours for m in minutes for s in seconds]
    if days is None:
        return day_times, DAY_S
    return [d * DAY_S + t for d in days for t in day_times], 7 * DAY_S


def schedule_period(schedule: str, default: int = 60) -> int:
    """The longest time in seconds between two consecutive runs of a schedule (cron or OnCalendar=), which is
    what the collector's nominal_interval must cover: accounting (collector/accounting.py) treats a span of more
    than three nominal intervals as a gap. `*/5 * * * *` -> 300; `15,45 9-17 * * *` -> 55800 (17:45 to 9:15);
    `30 2 * * 1-5` -> 3 days (Friday to Monday); `*:*:0/20` -> 20; `weekly` -> 7 days.

    Understood: every time of day (hour, minute, second lists, ranges and steps) on every day or on listed
    weekdays, and systemd's shorthands. Anything else (a date other than `*-*-*`, a time zone, `~`, fractional
    seconds) gives `default`."""
    try:
        calendar = cron_to_oncalendar(schedule)
        if calendar.lower() in _SHORTHAND_PERIODS:
            return _SHORTHAND_PERIODS[calendar.lower()]
        times, cycle = _run_times(calendar)
    except ValueError:  # CronError is one
        return default
    return _longest_gap(times, cycle)


class FilterModule:
    def filters(self) -> dict[str, object]:
        return {"cron_to_oncalendar": cron_to_oncalendar, "cpu_quota": cpu_quota, "memory_max": memory_max,
                "schedule_period": schedule_period}
