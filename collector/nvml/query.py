"""The one helper NVML calls go through, and the error policy it owns.

Why it exists: NVML answers the same few errors on every call (a function the loaded library lacks, a feature the
GPU does not have, a GPU that fell off the bus), and the answer to each should not be decided again at every call
site. `query` decides it once (docs/nvml-driver.md, "Where the NVML code lives"):

- a function missing from the loaded library (`FUNCTION_NOT_FOUND`, or pynvml's `NVMLLibraryMismatchError` when a
  versioned symbol is absent): logged once per process, answered with the caller's default;
- `NOT_SUPPORTED`: answered with the default;
- an error the caller names in `tolerate`: logged at debug level, answered with the default;
- `GPU_IS_LOST` or `UNKNOWN`: raised as `GpuLost`, whatever the call, which fails the GPU being read;
- any other error: pynvml's own exception, which fails the GPU being read too.

A call without a default is a required read: only the lost GPU becomes `GpuLost`, and every other error, missing
functions and `NOT_SUPPORTED` included, reaches the caller as pynvml raised it. The few call sites whose policy
differs (a fallback, an answer that is not an error, an extra that never fails a GPU) say why where they are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pynvml

log = logging.getLogger(__name__)

_MISSING_FUNCTION = (pynvml.NVMLError_FunctionNotFound, pynvml.NVMLLibraryMismatchError)
_LOST = frozenset((pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_UNKNOWN))
_REQUIRED: Any = object()

_noted: set[str] = set()  # what was logged once: missing functions, and compat's findings about the driver


class GpuFailed(Exception):
    """One GPU cannot be read (lost, no permission, an unexpected NVML error); the others are still read."""


class GpuLost(GpuFailed):
    """NVML answered GPU_IS_LOST or UNKNOWN on a GPU: it fell off the bus, or the driver failed on it. The message
    is NVML's own ("GPU is lost", "Unknown Error")."""


def query(fn: Callable[..., Any], /, *args: Any, default: Any = _REQUIRED, name: str = "",
          tolerate: tuple[type[BaseException], ...] = ()) -> Any:
    """fn(*args) under the policy above. name: the NVML function as logged when missing (fn's name by default;
    give it where fn is a wrapper that reaches a versioned symbol)."""
    try:
        return fn(*args)
    except _MISSING_FUNCTION:
        if default is _REQUIRED:
            raise
        note_missing(name or fn.__name__)
        return default
    except pynvml.NVMLError as err:
        if err.value in _LOST:
            raise GpuLost(str(err)) from err
        if default is _REQUIRED:
            raise
        if isinstance(err, pynvml.NVMLError_NotSupported):
            return default
        if isinstance(err, tolerate):
            log.debug("%s: %s", name or fn.__name__, err)
            return default
        raise


def is_missing_function(err: BaseException) -> bool:
    """The error a call to a function the loaded library lacks raises (for the call sites with their own policy)."""
    return isinstance(err, _MISSING_FUNCTION)


def note_missing(function: str) -> None:
    """Logs, once per process, that the driver's library lacks an NVML function."""
    note_once(function, "NVML function %s is not available on this driver; going on without it", function)


def note_once(key: str, message: str, *args: Any) -> None:
    if key not in _noted:
        _noted.add(key)
        log.info(message, *args)


def noted(key: str) -> bool:
    """Whether note_missing / note_once logged key already (a fallback taken once is taken from then on)."""
    return key in _noted


def text(value: Any) -> str:
    """An NVML string as str: pynvml answers bytes or str depending on the call and its version."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
