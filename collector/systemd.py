"""What the long-running service says to systemd and hears from it: sd_notify(3) messages (READY, WATCHDOG,
STATUS, STOPPING) and the stop and reload signals, kept apart from the service loop (collector.runner) because
both must work while that loop is stuck in a call into NVML that does not return.

sd_notify is written by hand, not through libsystemd or a binding: it is one datagram to a path from the
environment (sd_notify(3), "NOTIFY_SOCKET"), and a binding would be a compiled dependency for ten lines
(docs/dependencies.md).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

log = logging.getLogger("gpu-proc-collector")

STOP_GRACE_S = 1.0  # after SIGTERM, a collection still running is abandoned (the last good file stays)


def notify(message: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET (a path, or '@' for the abstract
    namespace). Nothing when not started by systemd with Type=notify. Never blocks the collector."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    import socket  # noqa: PLC0415 - only under systemd's Type=notify: a timer run does not pay its ~2 ms import

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
            sock.connect(address)
            sock.sendall(message.encode())  # never blocks: a full queue drops the message (a ping is sent again)
    except BlockingIOError:
        log.debug("systemd's notify socket is full; dropped %r", message)
    except OSError as err:
        log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), err)


class Signals:
    """SIGTERM/SIGINT stop the service; SIGHUP asks for the configuration to be read again.

    The signals are blocked in every thread and taken by one thread of their own (sigwait): a Python signal
    handler would only run in the main thread between bytecodes, never while it is stuck in a hung NVML call.
    A stop does not wait on the main thread: whatever it is in (a collection, a utilisation sample between two,
    NVML's shutdown), a process not gone STOP_GRACE_S after the signal ends itself, exit 0, and the last good file
    stays (a collection cut short never published; the state of the last one was saved before it ended)."""

    SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.collecting = threading.Event()
        signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        threading.Thread(target=self._wait, name="signals", daemon=True).start()

    def _wait(self) -> None:
        while True:
            if signal.sigwait(self.SIGNALS) == signal.SIGHUP:
                self.reload.set()
            else:
                self._stop()

    def _stop(self) -> None:
        if self.stop.is_set():
            return  # a second signal: the first one's timer runs
        self.stop.set()
        timer = threading.Timer(STOP_GRACE_S, self._abandon)
        timer.daemon = True
        timer.start()

    def _abandon(self) -> None:
        if self.collecting.is_set():
            log.warning("stopping: abandoned the collection in progress; the last good file stays")
        else:
            log.warning("stopping: a call into NVML did not return within %g s; exiting without it", STOP_GRACE_S)
        notify("STOPPING=1")
        sys.stderr.flush()
        os._exit(0)  # the service's exit code for a stop
