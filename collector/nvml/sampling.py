"""Per-process SM utilisation: the driver's samples, which of them to believe, and how to weigh them.

Why it exists: `nvmlDeviceGetProcessUtilization` answers samples, not a utilisation. Which samples are new (per
process, against the timestamps a run keeps in its state file), which are garbage (real drivers return some), and
how several of them make one figure is the same question for a timer run (`timer_activity`, once per run) and
for the long-running mode (`Integrator`, sampled every few seconds between writes). docs/nvml-driver.md,
"Per-process utilisation".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Optional

import pynvml

from collector.nvml.query import GpuLost, note_missing

log = logging.getLogger(__name__)

FIRST_RUN_WINDOW_US = 60_000_000  # with no previous timestamp, read the samples of the last minute
MAX_SM_PERCENT = 100


class Activity(NamedTuple):
    sm_percent: float  # time-weighted mean SM % over the process's kept entries
    active: bool  # some kept entry shows SM activity
    busy_seconds: Optional[float] = None  # the long-running mode's integral, and since when
    window_start: Optional[float] = None


Sample = tuple[int, int, int]  # (pid, timestamp in µs, SM %)


def seen_key(uuid: str, pid: int) -> str:
    """A process's key in the saved last-seen timestamps: "<GPU UUID>/<PID>"."""
    return f"{uuid}/{pid}"


def carried_last_seen(saved: Mapping[str, int], read: Collection[str]) -> dict[str, int]:
    """The saved timestamps of GPUs not read this time (failed, filtered out), for when they come back. A GPU that
    was read keeps only what this read recorded: its processes' entries, none of a process no longer listed."""
    return {key: ts for key, ts in saved.items() if key.split("/", 1)[0] not in read}


def timer_activity(handle: Any, uuid: str, listed: Collection[int], saved: Mapping[str, int],
                   now: int) -> tuple[Optional[dict[int, Activity]], dict[str, int]]:
    """A timer run's SM activity per listed PID, from the entries newer than that PID's last seen one (None where
    per-process utilisation cannot be measured), and what to keep of this GPU for the next run: the read's time
    and each listed PID's newest entry. Entries of one read can be seconds apart from PID to PID
    (docs/nvml-driver.md), so what was seen is kept per process: one timestamp per GPU would hide a busy process
    whose new entry is older than another process's last one."""
    previous_read = saved.get(uuid, 0)  # when this GPU was last read (µs)
    # A PID with no entry seen yet (new, or idle so far) counts the entries since shortly before the last read,
    # as late as entries can come (docs/nvml-driver.md); on a first read, those of the last minute.
    unknown = (previous_read if 0 < previous_read <= now else now) - FIRST_RUN_WINDOW_US
    records = {pid: saved.get(seen_key(uuid, pid), 0) for pid in listed}
    records = {pid: ts for pid, ts in records.items() if 0 < ts <= now}  # past now: the clock stepped back
    floors = {pid: records.get(pid, unknown) for pid in listed}
    kept = query_samples(handle, uuid, min(floors.values(), default=unknown), now, floors)
    for pid, ts, _ in kept or ():
        records[pid] = max(records.get(pid, 0), ts)
    seen = {uuid: now, **{seen_key(uuid, pid): ts for pid, ts in records.items()}}
    return (None if kept is None else time_weighted(kept)), seen


def query_samples(handle: Any, uuid: str, since_us: int, now_us: int,
                  floors: Optional[Mapping[int, int]]) -> Optional[list[Sample]]:
    """The plausible utilisation entries newer than since_us (and, with floors, only those of its PIDs, each newer
    than its own floor); [] when none; None where not measurable.

    Its own error policy, not collector.nvml.query's: NOT_FOUND is an answer here (no process had SM activity
    since then), and an error other than a lost GPU (UNKNOWN included) leaves utilisation unmeasured on this GPU,
    with a warning, rather than failing the GPU whose processes and memory were read."""
    try:
        raw = pynvml.nvmlDeviceGetProcessUtilization(handle, since_us)
    except pynvml.NVMLError_NotFound:
        return []  # no process had SM activity since then: measured, all idle
    except pynvml.NVMLError_NotSupported:
        return None
    except pynvml.NVMLError_FunctionNotFound:
        note_missing("nvmlDeviceGetProcessUtilization")
        return None
    except pynvml.NVMLError_GpuIsLost as err:
        raise GpuLost(str(err)) from err
    except pynvml.NVMLError as err:
        log.warning("per-process utilisation of %s unavailable: %s", uuid, err)
        return None
    samples: list[Sample] = []
    if raw:
        # Through the structure's field descriptors: pynvml's structures read every attribute through a Python
        # __getattribute__ (which decodes text fields), four times slower, and a tick reads three per process.
        fields = type(raw[0])
        pid, stamp, sm = fields.pid.__get__, fields.timeStamp.__get__, fields.smUtil.__get__
        samples = [(pid(s), stamp(s), sm(s)) for s in raw]
    # "The future" is after this answer, not after the run began: under CPUQuota= a run's own reads can take long
    # enough for the driver to have taken fresh samples since it started, and those are real.
    kept = plausible_samples(samples, floors, since_us, max(now_us, int(time.time() * 1_000_000)))
    if len(kept) < len(samples):
        log.debug("%s: ignored %d of %d utilisation entries (unlisted PID, SM %% over 100, or a timestamp "
                  "outside (last seen, now])", uuid, len(samples) - len(kept), len(samples))
    return kept


class Integrator:
    """The long-running mode's per-process utilisation: sampled every few seconds between two writes and
    integrated per PID over the time each tick covers, so a write reports the SM % of the whole interval, not
    of the driver's last sample period. Each tick's entries (time-weighted per PID) stand for the time since
    the previous tick; a PID with no entry in a tick was idle in it (the driver lists only busy processes).
    What was seen is kept per process, as a timer run keeps it (timer_activity): each query reads from the
    oldest last-seen timestamp among the processes the last write listed, and each PID's entries count past its
    own."""

    def __init__(self) -> None:
        self.window_start = time.time()
        self.handles: dict[str, Any] = {}  # whole GPUs to sample, from the last read (valid until nvmlShutdown)
        self.busy: dict[str, dict[int, float]] = {}  # GPU UUID -> PID -> SM-busy seconds in this window
        self.last_tick: dict[str, float] = {}
        self.seen: dict[str, dict[int, int]] = {}  # GPU UUID -> PID -> its newest entry's timestamp
        self.listed: dict[str, frozenset[int]] = {}  # GPU UUID -> the PIDs the last write listed

    def tick(self, now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        for uuid, handle in list(self.handles.items()):
            try:
                self._sample(uuid, handle, now)
            except GpuLost as err:  # the next write's read meets it and reports it
                log.debug("utilisation tick on %s: %s", uuid, err)

    def _sample(self, uuid: str, handle: Any, now: float, listed: Optional[Collection[int]] = None) -> None:
        start = self.last_tick.get(uuid, self.window_start)
        # A PID with no entry seen yet counts the entries since shortly before the previous tick, as late as
        # entries can come (docs/nvml-driver.md); a GPU's first query looks back as a timer run's first does.
        unknown = int(start * 1_000_000) - FIRST_RUN_WINDOW_US
        seen = self.seen.setdefault(uuid, {})
        listed = self.listed.get(uuid, frozenset()) if listed is None else listed
        floors = {pid: seen.get(pid, unknown) for pid in listed}
        # Processes that started since the last write are in no list yet, so the query starts at the unknown floor
        # at the latest; each entry counts past its own PID's newest, and none moves another PID's floor.
        kept = query_samples(handle, uuid, min([*floors.values(), unknown]), int(now * 1_000_000), None)
        self.last_tick[uuid] = now
        if kept is None:
            self.handles.pop(uuid, None)
            return
        kept = [(pid, ts, sm) for pid, ts, sm in kept if ts > floors.get(pid, max(seen.get(pid, 0), unknown))]
        for pid, ts, _ in kept:
            seen[pid] = max(seen.get(pid, 0), ts)
        for pid in [pid for pid, ts in seen.items() if ts <= unknown and pid not in listed]:
            del seen[pid]  # an unlisted PID's entry older than any floor: it can no longer count twice
        span = max(0.0, now - start)
        busy = self.busy.setdefault(uuid, {})
        for pid, activity in time_weighted(kept).items():
            busy[pid] = busy.get(pid, 0.0) + activity.sm_percent / 100.0 * span

    def take(self, uuid: str, handle: Any, listed: Collection[int], now_us: int) -> Optional[dict[int, Activity]]:
        """The window's activity of the listed PIDs (a last tick first), and a new window from now."""
        now = now_us / 1_000_000
        self.handles[uuid] = handle
        self._sample(uuid, handle, now, listed)
        if uuid not in self.handles:
            return None  # not measurable on this GPU
        self.listed[uuid] = frozenset(listed)
        busy = self.busy.pop(uuid, {})
        start = self.window_start
        self.last_tick[uuid] = now
        span = max(now - start, 1e-9)
        out = {}
        for pid in listed:
            seconds = busy.get(pid, 0.0)
            out[pid] = Activity(sm_percent=100.0 * seconds / span, active=seconds > 0, busy_seconds=seconds,
                                window_start=start)
        return out

    def new_window(self, now: float) -> None:
        self.window_start = now
        for uuid in self.last_tick:
            self.last_tick[uuid] = now


def plausible_samples(samples: Iterable[Sample], floors: Optional[Mapping[int, int]], since_us: int,
                      now_us: int) -> list[Sample]:
    """The entries worth believing. Real drivers return garbage entries too (docs/nvml-driver.md): PIDs in no
    process list, SM % above 100 (even 2^32-1), timestamps at or before the one asked for, or in the future. Only
    entries with 0 <= SM <= 100 and timestamp <= now are kept, and with floors only those of its PIDs whose
    timestamp is past the PID's floor (else past since_us), so one bad entry can neither yield a utilisation
    outside 0..100 nor move a saved timestamp past now (which would blind later runs), and an unlisted PID's
    entry moves nothing."""
    if floors is None:
        return [(pid, ts, sm) for pid, ts, sm in samples if 0 <= sm <= MAX_SM_PERCENT and since_us < ts <= now_us]
    return [(pid, ts, sm) for pid, ts, sm in samples
            if pid in floors and 0 <= sm <= MAX_SM_PERCENT and floors[pid] < ts <= now_us]


def time_weighted(samples: Iterable[Sample]) -> dict[int, Activity]:
    """Per PID, the mean of its entries weighted by the time each covers. The driver samples the whole GPU at
    instants; an entry stamped t covers the period since the previous instant seen on this GPU (the first
    instant: the typical spacing of the others). Where the driver returns one entry per process (the documented
    shape), that entry's value is the result."""
    samples = list(samples)
    if len({pid for pid, _, _ in samples}) == len(samples):
        # One entry per PID: its value, which is what the weighting yields, exactly, for plausible entries (an
        # integer SM % times an integer span, divided by that span), at half the cost: a tick at 1,000 processes
        # does this for every one of them.
        return {pid: Activity(sm_percent=float(sm), active=sm > 0) for pid, _, sm in samples}
    return _weighted(samples)


def _weighted(samples: Sequence[Sample]) -> dict[int, Activity]:
    stamps = sorted({ts for _, ts, _ in samples})
    gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:])]
    covers = {stamps[0]: sorted(gaps)[len(gaps) // 2] if gaps else 1} if stamps else {}
    covers.update((later, gap) for later, gap in zip(stamps[1:], gaps))
    weighted: dict[int, list[float]] = {}
    for pid, ts, sm in samples:
        total = weighted.setdefault(pid, [0.0, 0.0, 0.0])
        total[0] += sm * covers[ts]
        total[1] += covers[ts]
        total[2] = max(total[2], sm)
    return {pid: Activity(sm_percent=w / t, active=peak > 0) for pid, (w, t, peak) in weighted.items()}
