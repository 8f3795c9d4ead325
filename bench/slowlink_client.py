"""Run inside the caller's namespace by bench_agents.py: embed device-a's agent, call the cluster.

Prints one JSON line: stage times measured here, single-request latencies, streamed throughput.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import edgepart
from edgepart.agent import Agent
from edgepart.runtime import make_session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_ms  # noqa: E402


def main() -> None:
    dist, ip, n_lat, n_stream = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    os.sched_setaffinity(0, {0})
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    s0 = make_session(dist / "device-a" / "stage0.onnx", threads=1)
    s1 = make_session(dist / "device-b" / "stage1.onnx", threads=1)
    mid = dict(zip([o.name for o in s0.get_outputs()], s0.run(None, {"input": x})))

    stage0_ms = median_ms(lambda: s0.run(None, {"input": x}), 30)
    stage1_ms = median_ms(lambda: s1.run(None, mid), 30)
    with Agent(dist / "device-a", interface=ip, threads=1), \
            edgepart.InferenceSession(dist, interface=ip, timeout_s=60, discover_timeout_s=30) as sess:
        lat = median_ms(lambda: sess.run(None, {"input": x}), n_lat)
        t0 = time.perf_counter()
        futs = [sess.submit({"input": x}) for _ in range(n_stream)]
        for f in futs:
            f.result(300)
        tput = n_stream / (time.perf_counter() - t0)
    print(json.dumps({"stage0_ms": stage0_ms, "stage1_ms": stage1_ms, "latency_ms": lat, "throughput": tput}), flush=True)


if __name__ == "__main__":
    main()
