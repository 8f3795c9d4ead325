"""Run by bench_auto.py, on this machine or inside the caller's network namespace: one session.

    auto_client.py DIST IP INPUTS.npz N WARMUP OUT.npz

Finds the cluster of DIST (every device an `edgepart run` elsewhere), prints one JSON line with the
median single-request latency over N requests (after WARMUP), and writes the first answer to OUT.npz.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

import edgepart

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_ms  # noqa: E402


def main() -> None:
    os.sched_setaffinity(0, {0})
    dist, ip, feeds = Path(sys.argv[1]), sys.argv[2], dict(np.load(sys.argv[3]))
    n, warmup, out = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    with edgepart.InferenceSession(dist, interface=ip, timeout_s=120, discover_timeout_s=60) as sess:
        got = sess.run(None, feeds)
        np.savez(out, *got)
        print(json.dumps({"latency_ms": median_ms(lambda: sess.run(None, feeds), n, warmup=warmup)}), flush=True)


if __name__ == "__main__":
    main()
