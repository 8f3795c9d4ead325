"""The agent process's heap, set for tensors that arrive by the megabyte.

libzmq allocates every received message with malloc. glibc serves a block of 128 KiB or more with
a fresh mmap (its threshold then adapts, but trims free memory back to the OS beyond twice it), so
a stream of large messages pays page faults on every one: measured, the receiving agent's libzmq
I/O thread spent 0.14-0.15 ms per 1 MiB message this way, against 0.09-0.10 ms once blocks up to
32 MiB come from the heap and up to 64 MiB of freed memory is kept for the next ones (bench/
bench_agents.py's wire figure went from 3.2-3.7 to 4.1-4.2 GB/s). `edgepart run` calls
`keep_large_buffers()` at start; an app embedding an agent may call it too. The cost: a process
may hold up to 64 MiB of freed memory for reuse.

Only glibc has these knobs; elsewhere (musl, macOS, Windows) this does nothing. A setting given
through the environment (GLIBC_TUNABLES, MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_) wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("edgepart")

MMAP_THRESHOLD = 32 << 20  # blocks below this come from the heap, not a fresh mmap each
TRIM_THRESHOLD = 64 << 20  # free memory kept at the heap's top before it goes back to the OS
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def keep_large_buffers() -> bool:
    """Set glibc's malloc to reuse large blocks; True if it was set here."""
    if os.environ.get("GLIBC_TUNABLES", "").find("glibc.malloc") >= 0 or any(
            k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False  # the user chose
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    log.debug("malloc: blocks under %d MiB from the heap, %d MiB kept free: %s",
              MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20, "set" if ok else "refused")
    return ok
