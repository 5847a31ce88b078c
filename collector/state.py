"""What one run leaves for the next, in <state-dir>/state.json.

- the newest utilisation sample timestamp per GPU UUID, so each run reads only the samples of its own interval;
- per process (GPU UUID, PID and start time, so a reused PID is a new process) when it was last seen active;
- when the last successful collection ended, which a failed run carries over into its file;
- the accounting counters per owner and process, and each GPU's last energy reading (collector.accounting).
- per device kubelet allocated to a container (namespace, pod, container and device UUID: kubelet's List names no
  pod UID) since when it has gone without a process of that container, with the pod's UID where the host's files
  tell it, so a new pod under an old name starts afresh. A file without it loads with no allocation history.

A missing, corrupt or newer-format file is logged and replaced: it costs one interval of history, never a run.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

from collector import accounting, safeio
from collector.accounting import Ledger
from collector.attribution.allocation import History, HistoryKey
from collector.attribution.runtimes import ContainerMeta
from collector.model import Mutable
from collector.textfile import WriteError, atomic_write

log = logging.getLogger(__name__)

STATE_VERSION = 2  # 2 added the accounting ledger; a version 1 file is read, its counters start from 0
STATE_FILE = "state.json"
# 1.34 MiB at the largest scale the benchmark runs (5,000 GPU processes in 1,000 pods, bench/run.py): six times
# that is no state this collector wrote, and parsing it stays within the unit's memory (docs/reading-files.md)
MAX_STATE_BYTES = 8 << 20


class State(Mutable):
    """A plain class, not a NamedTuple: each State needs a Ledger (mutable) of its own, which a NamedTuple's
    default, one instance for all, cannot give."""

    FIELDS = ("last_success", "last_seen_us", "last_active", "ledger", "allocations", "containers")
    __slots__ = FIELDS

    def __init__(self, last_success: Optional[float] = None, last_seen_us: Optional[dict[str, int]] = None,
                 last_active: Optional[dict[str, float]] = None, *, ledger: Optional[Ledger] = None,
                 allocations: Optional[dict[HistoryKey, History]] = None,
                 containers: Optional[dict[str, ContainerMeta]] = None) -> None:
        self.last_success = last_success
        self.last_seen_us: dict[str, int] = {} if last_seen_us is None else last_seen_us
        self.last_active: dict[str, float] = {} if last_active is None else last_active
        self.ledger = Ledger() if ledger is None else ledger  # accounting counters (collector.accounting)
        self.allocations: dict[HistoryKey, History] = {} if allocations is None else allocations
        # The pod of each container id seen in the last run, from its runtime's files: a container's pod never
        # changes and ids are never reused, so the next run need not read (and parse) those files again.
        self.containers: dict[str, ContainerMeta] = {} if containers is None else containers


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def load(state_dir: str) -> State:
    """The state the last run saved. A file that cannot be read (not a regular file, larger than MAX_STATE_BYTES,
    not JSON within collector.safeio's bounds) is logged once and the run starts afresh: counters from zero, and
    its own file replaces the bad one."""
    path = os.path.join(state_dir, STATE_FILE)
    try:
        # non-finite numbers are judged field by field below (a bad last_success costs no counters)
        raw = safeio.read_json(path, MAX_STATE_BYTES, finite=False)
    except FileNotFoundError:
        return State()
    except safeio.Refused as err:
        log.warning("state file unusable, starting afresh (accounting counters from 0): %s", err)
        return State()
    if not isinstance(raw, dict):
        log.warning("state file %s is not a JSON object, starting afresh", path)
        return State()
    if raw.get("version") not in (1, STATE_VERSION):
        log.warning("state file %s has version %r, this collector writes %d; starting afresh",
                    path, raw.get("version"), STATE_VERSION)
        return State(last_success=_number(raw.get("last_success")))
    if raw.get("version") == 1:
        log.warning("state file %s is from an older version: the accounting counters start from 0", path)
    seen = raw.get("last_seen_us")
    active = raw.get("last_active")
    return State(
        last_success=_number(raw.get("last_success")),
        last_seen_us={str(k): int(v) for k, v in (seen.items() if isinstance(seen, dict) else ())
                      if isinstance(v, int) and not isinstance(v, bool)},
        last_active={str(k): float(v) for k, v in (active.items() if isinstance(active, dict) else ())
                     if _number(v) is not None},
        ledger=accounting.from_json(raw.get("accounting")),
        allocations=_allocations(raw.get("allocations"), path),
        containers=_containers(raw.get("containers")),
    )


ALLOCATION_FIELDS = ("namespace", "pod", "container", "device")


def _containers(raw: Any) -> dict[str, ContainerMeta]:
    """Malformed entries are left out: the container's files are then read again."""
    out: dict[str, ContainerMeta] = {}
    for cid, row in raw.items() if isinstance(raw, dict) else ():
        if isinstance(row, list) and len(row) == len(ContainerMeta._fields) and all(isinstance(x, str) for x in row):
            out[str(cid)] = ContainerMeta(*row)
    return out


def _allocations(raw: Any, path: str) -> dict[HistoryKey, History]:
    """The allocation history: a list of objects (written by this version; absent from files of older ones).
    Entries of the wrong shape are left out one by one."""
    out: dict[HistoryKey, History] = {}
    if raw is None:
        log.info("state file %s has no allocation history (an older collector wrote it); allocated GPUs' idle "
                 "times count from this run", path)
    for entry in raw if isinstance(raw, list) else ():
        if not isinstance(entry, dict):
            continue
        key = tuple(entry.get(name) for name in ALLOCATION_FIELDS)
        since, uid = _number(entry.get("idle_since")), entry.get("pod_uid", "")
        if all(isinstance(k, str) for k in key) and since is not None and isinstance(uid, str):
            out[(str(key[0]), str(key[1]), str(key[2]), str(key[3]))] = History(since, uid)
    return out


def save(state_dir: str, state: State) -> None:
    """Writes the state atomically; a failure is logged, not raised (the metrics matter more)."""
    document = {
        "version": STATE_VERSION,
        "last_success": state.last_success,
        "last_seen_us": state.last_seen_us,
        "last_active": state.last_active,
        "accounting": accounting.to_json(state.ledger),
        "containers": {cid: list(meta) for cid, meta in state.containers.items()},
        "allocations": [{**dict(zip(ALLOCATION_FIELDS, key)), "idle_since": history.idle_since,
                         "pod_uid": history.pod_uid} for key, history in sorted(state.allocations.items())],
    }
    try:
        os.makedirs(state_dir, mode=0o755, exist_ok=True)
        # compact: the file holds every process and owner; no NaN or Infinity, which the next load would refuse
        text = json.dumps(document, separators=(",", ":"), allow_nan=False)
        atomic_write(os.path.join(state_dir, STATE_FILE), text.encode(), mode=0o600)
    except (OSError, WriteError, ValueError) as err:
        log.warning("state not saved (the next run reads the last minute of samples again): %s", err)
