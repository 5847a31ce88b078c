"""Usage and energy accounting per owner, for chargeback: counters that PromQL can increase() over any window.

Each successful collection adds the interval since the previous successful one (docs/accounting.md):
- GPU seconds: the time a GPU or MIG instance was held by at least one of the owner's processes, weighted by the
  instance's share of its GPU's compute (a 3g MIG instance of a 7-slice GPU counts 3/7);
- SM seconds: SM-busy time in whole-GPU seconds: a process's measured SM % over the time it existed (integrated
  by the long-running mode, the NVML samples' value over the interval in a timer run); on MIG, the instance's GPM
  SM utilisation times its share, split evenly between the processes on it;
- memory byte-seconds: memory held times the time held;
- energy: each GPU's energy in the interval (nvmlDeviceGetTotalEnergyConsumption's increase) split between owners
  by their SM seconds on it as a fraction of the interval; what no owner accounts for (idle power, activity NVML
  did not attribute) goes to owner_kind="unattributed", so the split always adds up to the GPU's energy.

The counters live in the state file, so they survive restarts and are right in timer mode. They never go
backwards but on a state reset (they restart from 0, which Prometheus treats as a counter reset). A failed run
adds nothing (its state is not saved). An interval longer than MAX_GAP_INTERVALS nominal intervals, or a clock
that stepped back, is not filled with guesses: its length goes to the gap counter. Owners not seen for
RETENTION_S are dropped (their last value has been exported for that long).

Owners are bounded (docs/accounting.md, "Owner budget"): at most max_owners named owners have counters of their
own. Those the ledger already holds keep theirs; new owners take the places left, the largest users of this run
first; the rest are folded into one owner, owner_kind="overflow", so the counters of all owners still add up to
everything accounted. Owners' names are keys as model.safe_name makes them: bounded, and two owners never one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from collector.model import DeviceActivity, Mutable, ProcessRecord, safe_name

log = logging.getLogger(__name__)

UNATTRIBUTED = "unattributed"  # the owner_kind of what no owner accounts for
OVERFLOW = "overflow"  # the owner_kind and owner of the owners over the budget
MAX_GAP_INTERVALS = 3
RETENTION_S = 3600.0
# The oldest last run a gap is counted from: a state older than a year is not the history of this collector's
# counters (a hand-edited 0 or -Infinity would add 1.8e9 s or infinity to the gap counter).
MAX_GAP_S = 366 * 86400.0

OwnerKey = tuple[str, str, str, str]  # owner_kind, owner, namespace, pod
UNATTRIBUTED_KEY: OwnerKey = (UNATTRIBUTED, "", "", "")
OVERFLOW_KEY: OwnerKey = (OVERFLOW, OVERFLOW, "", "")
# What the owners' names may take, on average per owner of the budget: four times a long Kubernetes owner's
# (docs/accounting.md, "Owner budget"), so a flood of names at the label limit cannot fill the memory.
NAME_CHARS_PER_OWNER = 256
_POOLED = (UNATTRIBUTED_KEY, OVERFLOW_KEY)  # owners outside the budget: never folded, never dropped as stale


class OwnerUsage(Mutable):
    """One owner's counters; a run adds to a copy of the previous run's."""

    FIELDS = ("gpu_seconds", "sm_seconds", "memory_byte_seconds", "energy_joules", "last_seen")
    __slots__ = FIELDS

    def __init__(self, gpu_seconds: float = 0.0, sm_seconds: float = 0.0, memory_byte_seconds: float = 0.0,
                 energy_joules: float = 0.0, last_seen: float = 0.0) -> None:
        self.gpu_seconds = gpu_seconds
        self.sm_seconds = sm_seconds
        self.memory_byte_seconds = memory_byte_seconds
        self.energy_joules = energy_joules
        self.last_seen = last_seen

    def copy(self) -> OwnerUsage:
        return OwnerUsage(self.gpu_seconds, self.sm_seconds, self.memory_byte_seconds, self.energy_joules,
                          self.last_seen)


class Ledger(Mutable):
    FIELDS = ("owners", "processes", "energy_mj", "gap_seconds", "folded")
    __slots__ = FIELDS

    def __init__(self, owners: Optional[dict[OwnerKey, OwnerUsage]] = None,
                 processes: Optional[dict[str, float]] = None, energy_mj: Optional[dict[str, int]] = None,
                 gap_seconds: float = 0.0, folded: int = 0) -> None:
        self.owners: dict[OwnerKey, OwnerUsage] = {} if owners is None else owners
        self.processes: dict[str, float] = {} if processes is None else processes  # process key -> SM seconds
        self.energy_mj: dict[str, int] = {} if energy_mj is None else energy_mj  # the last reading per GPU UUID
        self.gap_seconds = gap_seconds
        self.folded = folded  # owners this run folded into the overflow owner (not saved: one run's count)


def owner_key(record: ProcessRecord) -> OwnerKey:
    """The owner's key in the ledger: its names as safe_name makes them, so a name is bounded before it is kept,
    and two owners whose names differ only past the label limit stay two."""
    o = record.owner
    return (o.kind, safe_name(o.name), safe_name(o.namespace), safe_name(o.pod))


def account(previous: Ledger, records: Sequence[ProcessRecord], process_keys: Sequence[str],
            activity: Mapping[str, DeviceActivity], energy_mj: Mapping[str, int], *, last_success: Optional[float],
            now: float, nominal_interval: float, max_owners: int) -> Ledger:
    """The ledger after this run. process_keys[i] names records[i] across runs (state.process_key). max_owners:
    how many named owners may have counters of their own (the others are folded into OVERFLOW_KEY)."""
    ledger = Ledger(owners={k: v.copy() for k, v in previous.owners.items()},
                    energy_mj=dict(energy_mj), gap_seconds=previous.gap_seconds)
    owners = [owner_key(r) for r in records]
    span = _accountable_span(ledger, last_success, now, nominal_interval)
    sm = _sm_seconds(records, activity, span, now) if span else [0.0] * len(records)
    for name, seconds in zip(process_keys, sm):
        ledger.processes[name] = previous.processes.get(name, 0.0) + seconds
    if span:
        _add_usage(ledger, records, owners, sm, span=span, now=now)
        _add_energy(ledger, previous.energy_mj, energy_mj, records=records, owners=owners, sm=sm, span=span,
                    now=now)
    for key in set(owners):
        ledger.owners.setdefault(key, OwnerUsage()).last_seen = now
    stale = [k for k, v in ledger.owners.items() if v.last_seen < now - RETENTION_S and k not in _POOLED]
    for k in stale:
        del ledger.owners[k]
    _fold(ledger, previous.owners, max_owners, now)
    return ledger


def _fold(ledger: Ledger, before: Mapping[OwnerKey, OwnerUsage], budget: int, now: float) -> None:
    """Keeps at most `budget` named owners, whose names take at most NAME_CHARS_PER_OWNER characters per place
    of the budget (docs/accounting.md, "Owner budget"). The owners the previous run kept stay, so series do not
    come and go; new owners take the places left, by this run's GPU seconds, then SM seconds, then memory, then
    key (the same ledger always keeps the same owners), each while its names fit. New owners past them are
    folded into OVERFLOW_KEY: their counters hold only this run's increase, so the overflow owner's increase is
    theirs and the owners' counters still add up to what was accounted. Kept owners past the budget (a state
    file written under a larger one) are dropped as stale ones are: their past increase was exported already."""
    named = [k for k in ledger.owners if k not in _POOLED]
    chars = budget * NAME_CHARS_PER_OWNER
    if len(named) <= budget and sum(map(_name_chars, named)) <= chars:
        return
    kept = [k for k in named if k in before]
    if len(kept) > budget:
        kept.sort(key=lambda k: (-ledger.owners[k].last_seen, k))
        log.warning("%d owners in the state are over the owner budget (%d): their counters are dropped",
                    len(kept) - budget, budget)
        for k in kept[budget:]:
            del ledger.owners[k]
        kept = kept[:budget]
    new = sorted((k for k in named if k not in before), key=lambda k: _by_usage(k, ledger.owners[k]))
    room, chars = budget - len(kept), chars - sum(map(_name_chars, kept))
    fold = []
    for k in new:
        if room > 0 and _name_chars(k) <= chars:
            room, chars = room - 1, chars - _name_chars(k)
        else:
            fold.append(k)
    if not fold:
        return
    overflow = ledger.owners.get(OVERFLOW_KEY)
    if overflow is None:
        overflow = ledger.owners[OVERFLOW_KEY] = OwnerUsage()
    for k in fold:
        usage = ledger.owners.pop(k)
        overflow.gpu_seconds += usage.gpu_seconds
        overflow.sm_seconds += usage.sm_seconds
        overflow.memory_byte_seconds += usage.memory_byte_seconds
        overflow.energy_joules += usage.energy_joules
    overflow.last_seen = now
    ledger.folded = len(fold)
    log.info("%d owners over the owner budget (%d) this run: counted as owner_kind=\"%s\"", len(fold), budget,
             OVERFLOW)


def _name_chars(key: OwnerKey) -> int:
    return len(key[1]) + len(key[2]) + len(key[3])


def _by_usage(key: OwnerKey, usage: OwnerUsage) -> tuple[float, float, float, OwnerKey]:
    return (-usage.gpu_seconds, -usage.sm_seconds, -usage.memory_byte_seconds, key)


def _accountable_span(ledger: Ledger, last_success: Optional[float], now: float, nominal: float) -> float:
    """Seconds this run accounts for: 0 on a first run (nothing to measure from), after a clock step back, or for
    a gap too long to fill (counted in the gap counter instead)."""
    if last_success is None:
        return 0.0
    if not math.isfinite(last_success) or last_success <= 0 or now - last_success > MAX_GAP_S:
        log.warning("the state's last successful run (%r) is not a plausible time: this run accounts nothing and "
                    "counts no gap", last_success)
        return 0.0
    span = now - last_success
    if span <= 0:
        log.warning("the clock stepped back %.0f s since the last run: this interval is not accounted", -span)
        return 0.0
    if span > MAX_GAP_INTERVALS * nominal:
        log.warning("%.0f s since the last successful run (more than %d intervals): not accounted, counted as a gap",
                    span, MAX_GAP_INTERVALS)
        ledger.gap_seconds += span
        return 0.0
    return span


def _held(record: ProcessRecord, span: float, now: float) -> float:
    """The part of the interval the process existed (it is listed now, and started when /proc says)."""
    return max(0.0, min(span, now - record.host.start_time))


def _share(record: ProcessRecord) -> float:
    mig = record.gpu.device.mig
    return 1.0 if mig is None else mig.share


def _sm_seconds(records: Sequence[ProcessRecord], activity: Mapping[str, DeviceActivity], span: float,
                now: float) -> list[float]:
    """SM-busy seconds of each process in whole-GPU seconds."""
    per_instance: dict[str, int] = {}
    for r in records:
        if r.gpu.device.mig is not None:
            pool = r.gpu.device.memory_pool or r.gpu.device.label
            per_instance[pool] = per_instance.get(pool, 0) + 1
    out = []
    for r in records:
        device = r.gpu.device
        if device.mig is None:
            if r.gpu.sm_busy_seconds is not None:  # the long-running mode's integral
                out.append(min(r.gpu.sm_busy_seconds, _held(r, span, now)))
            else:
                out.append((r.gpu.sm_utilization or 0.0) / 100.0 * _held(r, span, now))
            continue
        pool = device.memory_pool or device.label
        sm = activity[pool].sm_util if pool in activity else None
        out.append(0.0 if sm is None else sm / 100.0 * _held(r, span, now) * device.mig.share / per_instance[pool])
    return out


def _add_usage(ledger: Ledger, records: Sequence[ProcessRecord], keys: Sequence[OwnerKey], sm: Sequence[float],
               *, span: float, now: float) -> None:
    held: dict[tuple[OwnerKey, str], float] = {}  # one owner's processes on one device hold it once
    owners = ledger.owners
    for record, key, seconds in zip(records, keys, sm):
        usage = owners.get(key)
        if usage is None:  # not setdefault(key, OwnerUsage()), which would make an OwnerUsage per process
            usage = owners[key] = OwnerUsage()
        time_held = _held(record, span, now)
        usage.sm_seconds += seconds
        usage.memory_byte_seconds += float(record.gpu.used_memory or 0) * time_held
        device = (key, record.gpu.device.label)
        held[device] = max(held.get(device, 0.0), time_held * _share(record))
    for (key, _), seconds in held.items():
        ledger.owners[key].gpu_seconds += seconds


def _add_energy(ledger: Ledger, before: Mapping[str, int], now_mj: Mapping[str, int], *,
                records: Sequence[ProcessRecord], owners: Sequence[OwnerKey], sm: Sequence[float], span: float,
                now: float) -> None:
    for gpu, reading in now_mj.items():
        if gpu not in before:
            continue
        joules = (reading - before[gpu]) / 1000.0
        if joules < 0:
            log.warning("GPU %s: energy counter went back (driver reloaded?); counting only the energy since", gpu)
            joules = reading / 1000.0
        weights: dict[OwnerKey, float] = {}
        for record, key, seconds in zip(records, owners, sm):
            if record.gpu.device.gpu_uuid == gpu and seconds > 0:
                weights[key] = weights.get(key, 0.0) + seconds / span
        total = sum(weights.values())
        scale = 1.0 / total if total > 1.0 else 1.0  # shares can overlap (MPS, time-slicing): never above all
        attributed = 0.0
        for key, weight in weights.items():
            part = joules * weight * scale
            ledger.owners[key].energy_joules += part
            attributed += part
        ledger.owners.setdefault(UNATTRIBUTED_KEY, OwnerUsage(last_seen=now)).energy_joules += joules - attributed
        ledger.owners[UNATTRIBUTED_KEY].last_seen = now


# ---- the ledger in the state file ----

_USAGE_FIELDS = OwnerUsage.FIELDS  # a row's columns after the owner key


def to_json(ledger: Ledger) -> dict[str, Any]:
    return {
        # the row's columns are _USAGE_FIELDS, in that order (written out: a generator of getattr() a row was 60 %
        # of this function's time)
        "owners": [[*key, u.gpu_seconds, u.sm_seconds, u.memory_byte_seconds, u.energy_joules, u.last_seen]
                   for key, u in ledger.owners.items()],
        "processes": ledger.processes,
        "energy_mj": ledger.energy_mj,
        "gap_seconds": ledger.gap_seconds,
    }


def _number(value: Any) -> bool:
    """A finite, non-negative JSON number (NaN fails every comparison)."""
    return type(value) in _REAL and 0 <= value < _INF  # JSON gives int, float, bool, str ...: never a subclass


_REAL = (int, float)  # not bool: type(True) is bool
_INF = float("inf")
_ROW = 4 + len(_USAGE_FIELDS)


def from_json(raw: Any) -> Ledger:
    """The ledger a state file holds; anything malformed in it is left out (a counter restarting from 0 is a
    counter reset, never a wrong increase)."""
    if not isinstance(raw, dict):
        return Ledger()
    owners: dict[OwnerKey, OwnerUsage] = {}
    rows = raw.get("owners")
    for row in rows if isinstance(rows, list) else ():
        if type(row) is not list or len(row) != _ROW:
            continue
        kind, name, namespace, pod, *values = row
        if (type(kind) is str and type(name) is str and type(namespace) is str and type(pod) is str
                and all(type(x) in _REAL and 0 <= x < _INF for x in values)):
            # safe names already, unless an older collector wrote the file (it kept names whole)
            owners[(kind, safe_name(name), safe_name(namespace), safe_name(pod))] = OwnerUsage(*map(float, values))
    processes = raw.get("processes")
    energy = raw.get("energy_mj")
    gap = raw.get("gap_seconds")
    return Ledger(
        owners=owners,
        processes={str(k): float(v) for k, v in (processes.items() if isinstance(processes, dict) else ())
                   if _number(v)},
        energy_mj={str(k): int(v) for k, v in (energy.items() if isinstance(energy, dict) else ())
                   if isinstance(v, int) and not isinstance(v, bool) and v >= 0},
        gap_seconds=float(gap) if isinstance(gap, (int, float)) and _number(gap) else 0.0,
    )
