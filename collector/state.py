"""What one run leaves for the next, in <state-dir>/state.json.

- the newest utilisation sample timestamp per GPU UUID, so each run reads only the samples of its own interval;
- per process (GPU UUID, PID and start time, so a reused PID is a new process) when it was last seen active;
- when the last successful collection ended, which a failed run carries over into its file.

A missing, corrupt or newer-format file is logged and replaced: it costs one interval of history, never a run.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, NamedTuple, Optional

from collector.textfile import WriteError, atomic_write

log = logging.getLogger(__name__)

STATE_VERSION = 1
STATE_FILE = "state.json"


class State(NamedTuple):
    """Never changed once made (the defaults are shared): a run builds the next one."""

    last_success: Optional[float] = None
    last_seen_us: dict[str, int] = {}  # noqa: RUF012
    last_active: dict[str, float] = {}  # noqa: RUF012


def process_key(gpu_uuid: str, pid: int, start_time: float) -> str:
    return f"{gpu_uuid}/{pid}/{start_time:.2f}"


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def load(state_dir: str) -> State:
    path = os.path.join(state_dir, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        return State()
    except (OSError, ValueError) as err:
        log.warning("state file %s unreadable, starting afresh: %s", path, err)
        return State()
    if not isinstance(raw, dict):
        log.warning("state file %s is not a JSON object, starting afresh", path)
        return State()
    if raw.get("version") != STATE_VERSION:
        log.warning("state file %s has version %r, this collector writes %d; starting afresh",
                    path, raw.get("version"), STATE_VERSION)
        return State(last_success=_number(raw.get("last_success")))
    seen = raw.get("last_seen_us")
    active = raw.get("last_active")
    return State(
        last_success=_number(raw.get("last_success")),
        last_seen_us={str(k): int(v) for k, v in (seen.items() if isinstance(seen, dict) else ())
                      if isinstance(v, int) and not isinstance(v, bool)},
        last_active={str(k): float(v) for k, v in (active.items() if isinstance(active, dict) else ())
                     if _number(v) is not None},
    )


def save(state_dir: str, state: State) -> None:
    """Writes the state atomically; a failure is logged, not raised (the metrics matter more)."""
    document = {
        "version": STATE_VERSION,
        "last_success": state.last_success,
        "last_seen_us": state.last_seen_us,
        "last_active": state.last_active,
    }
    try:
        os.makedirs(state_dir, mode=0o755, exist_ok=True)
        atomic_write(os.path.join(state_dir, STATE_FILE), json.dumps(document, sort_keys=True).encode(), mode=0o600)
    except (OSError, WriteError) as err:
        log.warning("state not saved (the next run reads the last minute of samples again): %s", err)
