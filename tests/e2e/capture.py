"""Capture every frame on one interface, as tcpdump would, until stdin closes or a time limit:
run inside a host's network namespace by tests/e2e/test_secure.py (`capture.py IFACE OUT SECONDS`).
Prints "capturing" once the socket is bound; writes the raw frames, concatenated, to OUT."""

from __future__ import annotations

import select
import socket
import sys
import time

ETH_P_ALL = 0x0003


def main() -> None:
    iface, out, limit_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    s.setblocking(False)
    print("capturing", flush=True)
    end = time.monotonic() + limit_s
    chunks = []
    while time.monotonic() < end:
        ready, _, _ = select.select([s, sys.stdin], [], [], 0.1)
        if sys.stdin in ready and not sys.stdin.readline():
            break
        if s in ready:
            for _ in range(1000):
                try:
                    chunks.append(s.recv(65535))
                except BlockingIOError:
                    break
    s.close()
    with open(out, "wb") as f:
        f.write(b"".join(chunks))


if __name__ == "__main__":
    main()
