"""Which unix sockets a process can connect to: run as the collector's service (verify.yml puts it in the unit's
ExecStart= for one start), it answers what the unit's sandbox leaves reachable.

    socket_probe.py LIST OUT

LIST: a file of socket paths, one a line (every socket the guest has, found outside the sandbox); OUT: a JSON object
path -> "connected" or the errno name connect(2) gave (EACCES: a hidden socket, which InaccessiblePaths= replaces by
a node of mode 0000; ENOENT: a socket in a hidden directory or home). A datagram socket (systemd's notify socket)
refuses a stream connection with EPROTOTYPE and is tried again as one.
"""

from __future__ import annotations

import errno
import json
import socket
import sys


def probe(path: str) -> str:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        sock = socket.socket(socket.AF_UNIX, kind)
        sock.settimeout(2)
        try:
            sock.connect(path)
        except OSError as err:
            if err.errno == errno.EPROTOTYPE and kind == socket.SOCK_STREAM:
                continue
            return errno.errorcode.get(err.errno or 0, str(err))
        finally:
            sock.close()
        return "connected"
    return "EPROTOTYPE"


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        paths = [line.strip() for line in f if line.strip()]
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump({path: probe(path) for path in paths}, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
