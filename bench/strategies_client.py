"""Run inside the caller's namespace by bench_strategies.py: the caller's device (dev0) computes.

    strategies_client.py DIST IP INPUTS.npz N OUT.npz     through agents: dev0 embedded, dev1 elsewhere
    strategies_client.py --one MODEL.onnx INPUTS.npz N OUT.npz   one onnxruntime session, 1 thread

Prints one JSON line with the median single-request latency; writes the first answer to OUT.npz.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

import edgepart
from edgepart.agent import Agent
from edgepart.runtime import make_session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_ms  # noqa: E402


def main() -> None:
    os.sched_setaffinity(0, {0})
    if sys.argv[1] == "--one":
        model, feeds, n, out = sys.argv[2], dict(np.load(sys.argv[3])), int(sys.argv[4]), sys.argv[5]
        sess = make_session(model, threads=1)
        names = [o.name for o in sess.get_outputs()]
        np.savez(out, **dict(zip(names, sess.run(None, feeds))))
        print(json.dumps({"latency_ms": median_ms(lambda: sess.run(None, feeds), n)}), flush=True)
        return
    dist, ip, feeds, n, out = Path(sys.argv[1]), sys.argv[2], dict(np.load(sys.argv[3])), int(sys.argv[4]), sys.argv[5]
    with Agent(dist / "dev0", interface=ip, threads=1), \
            edgepart.InferenceSession(dist, interface=ip, timeout_s=60, discover_timeout_s=30) as sess:
        np.savez(out, **sess.submit(feeds).result(60))
        print(json.dumps({"latency_ms": median_ms(lambda: sess.run(None, feeds), n)}), flush=True)


if __name__ == "__main__":
    main()
