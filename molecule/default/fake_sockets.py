"""Listening unix sockets where container runtimes, kubelet and their plugins put theirs, so verify.yml can show which
of them the collector's service reaches (socket_probe.py). Runs until SIGTERM, then removes the sockets it made.

    fake_sockets.py PATH...
"""

from __future__ import annotations

import os
import signal
import socket
import sys


def main() -> int:
    made: list[str] = []
    listeners = []
    for path in sys.argv[1:]:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.exists(path):
            continue  # a real daemon's: leave it alone
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(8)
        listeners.append(sock)
        made.append(path)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    for path in made:
        os.unlink(path)
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sys.exit(main())
